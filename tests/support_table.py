"""The architecture support table of README.md and docs/models.md, generated from what the tests run.

    python tests/support_table.py          # prints both tables

`tests/test_generic.py::test_support_tables_are_the_generated_ones` holds the committed tables to this output, so a
table row exists only for an architecture the conformance, generic and export tests run on, with the methods they
edit it with and the tracing path its adapter takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_conformance import HPARAMS  # noqa: E402  (the methods every tiny architecture is edited with)

from intattn_tl.model.load import load_model  # noqa: E402
from intattn_tl.model.tiny import FAST_KINDS, GENERIC_KINDS, TINY_KINDS  # noqa: E402
from intattn_tl.repro.tables import DISPLAY  # noqa: E402

# documentation, not measured: what each tiny architecture exercises
DIFFERS = {"llama": "reference; also run through generic", "qwen2": "q/k/v biases", "mistral": "sliding window",
           "gemma3": "post-norms", "gpt2": "Conv1D, biases, learned positions",
           "neox": "parallel residual, partial rotary", "gptj": "parallel residual",
           "opt": "learned positions (GELU in the tiny one)", "phi": "parallel residual, partial rotary"}
EXPORT = "logits equal (float64, 1e-6)"  # tests/test_export.py::test_export_of_every_tiny_architecture_carries_the_edit_exactly


def rows() -> list[dict]:
    out = []
    for kind in TINY_KINDS:
        model = load_model(f"tiny-{kind}")
        out.append({"kind": kind, "architecture": type(model.hf_model).__name__,
                    "tracing": "fast" if model.spec.family.runs_blocks else "generic",
                    "methods": ", ".join(DISPLAY[m] for m in HPARAMS),
                    "export": EXPORT, "differs": DIFFERS[kind]})
    return out


def docs_table(rs: list[dict]) -> str:
    lines = ["| tiny model | architecture | tracing | methods tested | export | what differs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| `tiny-{r['kind']}` | {r['architecture']} | {r['tracing']} | {r['methods']} | {r['export']} | "
              f"{r['differs']} |" for r in rs]
    return "\n".join(lines)


def readme_table(rs: list[dict]) -> str:
    lines = ["| tracing and targets | architectures tested (tiny random models) | methods | export |", "|---|---|---|---|"]
    for path, kinds in (("fast (own block loop)", FAST_KINDS), ("generic (bridge hooks)", GENERIC_KINDS)):
        mine = [r for r in rs if r["kind"] in kinds]
        assert {r["tracing"] for r in mine} == {path.split()[0]}, mine
        (methods,), (export,) = {r["methods"] for r in mine}, {r["export"] for r in mine}
        lines.append(f"| {path} | {', '.join(r['architecture'].removesuffix('ForCausalLM').removesuffix('LMHeadModel') for r in mine)} "
                     f"| {methods} | {export} |")
    return "\n".join(lines)


if __name__ == "__main__":
    rs = rows()
    print(docs_table(rs), readme_table(rs), sep="\n\n")
