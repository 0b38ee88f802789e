"""One module per `intattn` subcommand (see intattn_tl.cli)."""


def add_dtype_argument(p) -> None:
    """`--dtype`: the one meaning everywhere is the dtype the model is loaded (and therefore run) in."""
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype the model's weights are loaded and computed in: float32 (default, exact) or "
                        "bfloat16 (half the memory; ~2x faster matmuls on CPUs with bf16 units; numbers differ "
                        "slightly). Known models keep one dequantized cache per dtype.")
