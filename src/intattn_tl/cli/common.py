"""One module per `intattn` subcommand (see intattn_tl.cli)."""


def add_dtype_argument(p) -> None:
    """`--dtype`: the one meaning everywhere is the dtype the model is loaded (and therefore run) in."""
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype the model's weights are loaded and computed in: float32 (default, exact) or "
                        "bfloat16 (half the memory; ~2x faster matmuls on GPUs and on CPUs with avx512_bf16 / AMX, "
                        "many times slower on CPUs without them, which get a warning; numbers differ slightly). "
                        "Known models keep one dequantized cache per dtype.")


def add_placement_arguments(p) -> None:
    """`--device-map` / `--max-memory`: split a model too large for one device over several (accelerate)."""
    from intattn_tl.core.checks import device_map, max_memory

    p.add_argument("--device-map", type=device_map, default=None, metavar="auto|JSON",
                   help="split the model over devices with accelerate instead of putting it on --device: 'auto' "
                        "(fill the GPUs in order, then the CPU, then disk) or a JSON object {HF module name: device}")
    p.add_argument("--max-memory", type=max_memory, default=None, metavar="DEV=SIZE,...",
                   help="per-device budget for --device-map auto, e.g. 0=70GiB,1=70GiB,cpu=100GiB (or JSON)")


def placement(args) -> dict:
    """load_model's keyword arguments for --device / --device-map / --max-memory (checked together)."""
    from intattn_tl.core.checks import CheckError

    if getattr(args, "max_memory", None) is not None and getattr(args, "device_map", None) is None:
        raise CheckError("--max-memory bounds a split model: it needs --device-map (e.g. --device-map auto)")
    if getattr(args, "device_map", None) is None:
        return {"device": args.device}
    return {"device": args.device, "device_map": args.device_map, "max_memory": args.max_memory}


def preflight(args) -> None:
    """Before any work: the cache folder and every output writable with room for what the command will write,
    each file named in `--set` readable, and W&B usable: its folder writable, an online mode it cannot follow
    said (EnvironmentProblem naming the path / setting)."""
    import sys
    from pathlib import Path

    from intattn_tl.core.environment import MIN_FREE_CACHE, check_cache, check_out, check_setting_paths
    from intattn_tl.model.gguf import cache_bytes_needed
    from intattn_tl.model.registry import KNOWN_MODELS
    from intattn_tl.repro.tracking import check_dir, wandb_notice, wanted

    check_setting_paths(getattr(args, "overrides", None) or [])
    model = getattr(args, "model", None)
    if model is not None:  # a command that loads a model also writes statistics / targets / prefixes to the cache
        check_cache(MIN_FREE_CACHE + (cache_bytes_needed(model, getattr(args, "dtype", "float32"))
                                      if model in KNOWN_MODELS else 0))
    for setting in ("out", "save"):
        path = getattr(args, setting, None)
        if path is not None:
            path = Path(path)
            check_out(path.parent if path.is_file() else path, f"--{setting}")
    if wanted(args):  # logging at the end must not fail after the work is done
        check_dir()
        if notice := wandb_notice():
            print(f"intattn {args.command}: {notice}", file=sys.stderr)
