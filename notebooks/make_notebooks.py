"""Writes the walkthrough notebooks from plain cell lists (so their source is reviewable as Python).

    python notebooks/make_notebooks.py        # rewrites 02_editing_walkthrough.ipynb and 03_alpha_balance.ipynb
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

EDITING = [
    ("md", "# Editing walkthrough: one fact, IntAttn-Edit, before/after, weight deltas, rollback\n\n"
           "Runs on the real SmolLM2-135M on a CPU in a few minutes. `SMALL` keeps the key statistics sample small; "
           "set it to False for the full settings."),
    ("code", "import torch\nfrom intattn_tl import load_model, load_edits\nfrom intattn_tl.api import edit\n"
             "from intattn_tl.config.hparams import load_hparams\n\nSMALL = True\nmodel = load_model('smollm2-135m')\n"
             "records = load_edits('wiki_counterfact', limit=2)\nfor r in records:\n    print(r.prompt, '->', r.target_new, '(was', r.ground_truth[0] + ')')"),
    ("code", "def greedy(prompt, n=6):\n    ids = torch.tensor([model.tokenizer(prompt)['input_ids']])\n"
             "    with torch.no_grad():\n        for _ in range(n):\n            nxt = model.bridge(ids)[0, -1].argmax()\n"
             "            ids = torch.cat([ids, nxt.view(1, 1)], 1)\n"
             "    return model.tokenizer.decode(ids[0, -n:])\n\nbefore = {r.id: greedy(r.prompt) for r in records}\nbefore"),
    ("code", "hp = load_hparams('intattn', model.name, {'mom2_n_samples': 20_000} if SMALL else None)\n"
             "print(hp)\noriginal_w_out = [w.clone() for w in model.spec.w_out]\noriginal_w_o = [w.clone() for w in model.spec.w_o]\n"
             "result = edit(model, records, method='intattn', hparams=hp)\nafter = {r.id: greedy(r.prompt) for r in records}\nafter"),
    ("md", "The update touches W_O at the critical attention layers (weighted by α) and W_out at the critical MLP layers (1−α)."),
    ("code", "for name, delta in sorted(result.deltas.items()):\n    kind, layer = name.split('.')\n"
             "    base = (model.spec.w_o if kind == 'w_o' else model.spec.w_out)[int(layer)]\n"
             "    print(f'{name:10s} |Δ|={delta.norm():.4f}  |Δ|/|W|={delta.norm() / base.norm():.2e}')"),
    ("code", "import matplotlib.pyplot as plt\nnames = sorted(result.deltas)\nplt.bar(names, [result.deltas[n].norm().item() for n in names])\n"
             "plt.xticks(rotation=60); plt.ylabel('Frobenius norm of Δ'); plt.title('IntAttn-Edit weight deltas'); plt.tight_layout()"),
    ("code", "result.rollback()\nassert all(torch.equal(a, b) for a, b in zip(model.spec.w_out, original_w_out))\n"
             "assert all(torch.equal(a, b) for a, b in zip(model.spec.w_o, original_w_o))\n"
             "assert {r.id: greedy(r.prompt) for r in records} == before\nprint('rolled back bit-for-bit')"),
]

ALPHA = [
    ("md", "# The balance factor α\n\nα = ΣLD(attn) / (ΣLD(mlp) + ΣLD(attn)) from causal tracing decides how much of an "
           "edit goes into attention. Here: the measured α for SmolLM2-135M, then a tiny sweep of α on real edits."),
    ("code", "import json\nfrom intattn_tl.config.hparams import tracing_result\nres = tracing_result('smollm2-135m')\n"
             "print(json.dumps({k: res[k] for k in ('alpha', 'mlp_layers', 'attn_layers', 'n_facts')}, indent=1) if res else 'no tracing result committed')"),
    ("code", "from intattn_tl import load_model, load_edits\nfrom intattn_tl.evaluation.metrics import EvalConfig, locality_reference\n"
             "from intattn_tl.repro.sweep import sweep_point, plot_figure4\n\nSMALL = True\nmodel = load_model('smollm2-135m')\n"
             "records = load_edits('zsre', limit=4 if SMALL else 100)\ncfg = EvalConfig(fluency_max_len=40 if SMALL else 100, progress=False)\n"
             "ref = locality_reference(model, records, cfg)"),
    ("code", "overrides = {'mom2_n_samples': 20_000} if SMALL else {}\n"
             "points = [sweep_point(model, records, a, cfg, ref, overrides) for a in (0.0, 0.5, 1.0)]\n"
             "for p in points:\n    print({k: round(p[k], 2) for k in ('alpha', 'edit_succ', 'portability', 'locality', 'fluency')})"),
    ("code", "import tempfile\nfrom pathlib import Path\nfrom IPython.display import Image\n"
             "Image(filename=str(plot_figure4(points, Path(tempfile.mkdtemp()) / 'figure4.png', 'SmolLM2, ZsRE, T=4')))"),
]


def build(cells, path: Path) -> None:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(EDITING, HERE / "02_editing_walkthrough.ipynb")
    build(ALPHA, HERE / "03_alpha_balance.ipynb")
