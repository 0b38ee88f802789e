"""Writes the walkthrough notebooks from plain cell lists (so their source is reviewable as Python).

    python notebooks/make_notebooks.py                 # rewrites every notebook, without outputs
    python notebooks/make_notebooks.py --execute       # ... and runs each (kernel python3, cwd notebooks/),
                                                       # saving the outputs: figures show on GitHub unrun
    python notebooks/make_notebooks.py --execute 04_your_fact.ipynb   # only the ones named

The committed notebooks are the executed ones. Executing needs the `dev` extra (nbclient, ipykernel) and the
real SmolLM2 model; progress bars are switched off and this machine's paths replaced in the saved outputs.
"""

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

TRACING = [
    ("md", "# Causal tracing on SmolLM2-135M\n\nCorrupt the subject's embeddings with Gaussian noise (3x the embedding std), "
           "restore one clean activation (residual / attention output / MLP output, single layer or ROME's window of 10 "
           "layers), and measure how much of the answer comes back: P_pt(r) - P_*(r) and the normalized logit difference "
           "LD = (LD_pt - LD_*)/(LD_clean - LD_*), LD = logit(r) - logit(r'), r' = the corrupted run's most likely wrong "
           "token.\n\nSettings here are tiny (2 facts, 2 noise samples) so the notebook runs in minutes on a CPU; "
           "`intattn trace --model smollm2-135m --facts 100 --out DIR` is the real run."),
    ("code", "import torch\ntorch.set_num_threads(2)\nfrom intattn_tl.model.load import load_model\n"
             "from intattn_tl.data.records import load_known_facts\n"
             "from intattn_tl.locate.tracing import trace_fact, trace_dataset, embedding_std\n"
             "from intattn_tl.locate.balance import aggregate, summarize\n"
             "from intattn_tl.locate.plots import plot_fact, plot_heatmaps, plot_layer_curves\n\n"
             "model = load_model('smollm2-135m')\nprint(model.spec.n_layers, 'layers')"),
    ("md", "## Trace known facts\n`trace_dataset` keeps only facts the model answers greedily (skipped facts are listed "
           "with the reason) and calls `trace_fact` on each: the whole grid (kinds x layers x tokens), exact, reusing the "
           "corrupted run's states."),
    ("code", "# resid + ROME's windows keep the notebook quick; leave `kinds` out for single-layer attn/mlp too\n"
             "run = trace_dataset(model, load_known_facts(), 2, n_samples=2, kinds=('resid', 'attn_window', 'mlp_window'))\n"
             "print(len(run.results), 'traced of', run.seen, 'read; skipped:', run.skipped[:2])\nr = run.results[0]\n"
             "print(r.prompt, '->', r.answer, '| known:', r.known, '| P clean', round(r.p_clean, 3), '| P corrupted', "
             "round(r.p_corrupt, 3),\n      '| contrast token', repr(model.tokenizer.decode([r.contrast_token])))\n"
             "assert r.known and r.p_clean > r.p_corrupt"),
    ("md", "## One fact, per token and layer (ROME's picture; subject tokens starred)"),
    ("code", "plot_fact(r, 'resid'); plot_fact(r, 'mlp_window'); plot_fact(r, 'attn_window');"),
    ("md", "## By token class (Figure 1) and at the last subject token (Figure 2)"),
    ("code", "ld, prob = aggregate(run.results, 'ld'), aggregate(run.results, 'prob')\nkinds = r.kinds\n"
             "plot_heatmaps(ld, kinds, title='2 facts');\nplot_layer_curves(ld, prob, kinds);"),
    ("md", "## The balance factor alpha and the critical layers"),
    ("code", "s = summarize(run.results)\nprint('alpha =', round(s['alpha'], 3), '| attention layers', s['attn_layers'], "
             "'| MLP layers', s['mlp_layers'])\nassert 0.0 <= s['alpha'] <= 1.0"),
    ("md", "With 2 facts and 2 noise samples these numbers are noisy; `src/intattn_tl/model_results/<model>.json` holds "
           "the measured ones (its `n_facts` and `command` say how they were made)."),
    ("md", "## The same experiment with the bridge's own hooks\n\n"
           "What a TransformerLens user would write for one site: add noise to the subject's embeddings at `hook_embed`, "
           "put back the clean `blocks.{l}.hook_attn_out` at one (layer, token), run `model.bridge.run_with_hooks`. "
           "The toolkit's `trace_fact` computes the same numbers with partial forwards instead of hooks (faster, no "
           "hook per site); here the two meet at one site.\n\n"
           "To get the toolkit's noise exactly: `tracing.subject_noise` draws it on the CPU from "
           "`torch.Generator().manual_seed(seed)` (seed 0 unless `trace_fact(seed=...)`), as one "
           "`torch.randn(n_samples, n_subject_tokens, d_model)` times 3 x the embedding std; sample i is row i of the batch."),
    ("code", "import functools\nimport numpy as np\nimport matplotlib.pyplot as plt\n\n"
             "N = 2  # noise samples\n"
             "toolkit = trace_fact(model, r.prompt, r.subject, r.answer, n_samples=N, kinds=('attn',))  # single-layer attention restores\n"
             "s0, s1 = toolkit.subject_span\nt = s1 - 1  # the last subject token\n"
             "layer = int(np.nanargmax(toolkit.prob_effect[0, :, t]))  # the strongest attention layer there\n"
             "print(f'site: blocks.{layer}.hook_attn_out at token {t} ({toolkit.tokens[t]!r}); subject tokens {s0}..{s1 - 1}')"),
    ("code", "ids = torch.tensor([model.tokenizer(r.prompt)['input_ids']])\nassert ids.shape[1] == len(toolkit.tokens)\n"
             "noise = torch.randn(N, s1 - s0, model.spec.d_model, generator=torch.Generator().manual_seed(0)) * 3 * embedding_std(model)\n"
             "_, clean = model.bridge.run_with_cache(ids)\n\n"
             "def corrupt_subject(embed, hook):\n    embed = embed.clone()\n    embed[:, s0:s1] += noise\n    return embed\n\n"
             "# inside a hook, hook.name is the bridge's underlying name (blocks.L.attn.o.hook_in for blocks.L.attn.hook_z),\n"
             "# so the site to restore comes in through functools.partial\n"
             "def restore(act, hook, site, pos, head=None):\n    act = act.clone()\n"
             "    if head is None:\n        act[:, pos] = clean[site][0, pos]\n"
             "    else:  # attn.hook_z is [batch, pos, head, d_head]\n        act[:, pos, head] = clean[site][0, pos, head]\n"
             "    return act\n\n"
             "def run(*restores):\n    with torch.no_grad():\n"
             "        logits = model.bridge.run_with_hooks(ids.repeat(N, 1), fwd_hooks=[('hook_embed', corrupt_subject), *restores])[:, -1]\n"
             "    r_tok, r2_tok = toolkit.answer_token, toolkit.contrast_token\n"
             "    return logits.softmax(-1)[:, r_tok].mean().item(), (logits[:, r_tok] - logits[:, r2_tok]).mean().item()\n\n"
             "p_star, ld_star = run()\n"
             "print(f'corrupted, hooks:   P(r) = {p_star:.7f}  LD = {ld_star:.7f}')\n"
             "print(f'corrupted, toolkit: P(r) = {toolkit.p_corrupt:.7f}  LD = {toolkit.ld_corrupt:.7f}')"),
    ("code", "site = f'blocks.{layer}.hook_attn_out'\n"
             "p, ld = run((site, functools.partial(restore, site=site, pos=t)))\n"
             "k = toolkit.kind('attn')\np_tk, ld_tk = float(toolkit.prob[k, layer, t]), float(toolkit.logit_diff[k, layer, t])\n"
             "norm = lambda x: (x - toolkit.ld_corrupt) / (toolkit.ld_clean - toolkit.ld_corrupt)\n"
             "print(f'restore {site} at token {t}:')\n"
             "print(f'hooks:   P(r) = {p:.7f}  LD = {ld:.7f}  normalized LD = {norm(ld):.7f}')\n"
             "print(f'toolkit: P(r) = {p_tk:.7f}  LD = {ld_tk:.7f}  normalized LD = {norm(ld_tk):.7f}')\n"
             "print(f'|difference|: P {abs(p - p_tk):.1e}, LD {abs(ld - ld_tk):.1e}')\n"
             "# float32 sums in another order: P within 1e-5, LD (logits of a few units) within 2e-5, as tests/test_tracing.py;\n"
             "# the fully corrupted run, with no clean activation put back, drifts most (2.4e-5 seen on one CPU): 5e-5 there\n"
             "assert abs(p - p_tk) < 1e-5 and abs(ld - ld_tk) < 2e-5\n"
             "assert abs(p_star - toolkit.p_corrupt) < 1e-5 and abs(ld_star - toolkit.ld_corrupt) < 5e-5"),
    ("md", "### One attention head: `attn.hook_z`\n\n`blocks.{l}.attn.hook_z` holds the heads' outputs before W_O. "
           "Restoring every head there is the same as restoring `hook_attn_out` (SmolLM2's W_O has no bias); restoring "
           "one head at a time asks which head carries the effect. The toolkit restores whole modules only, so the "
           "single-head numbers have no toolkit counterpart."),
    ("code", "z = f'blocks.{layer}.attn.hook_z'\n"
             "p_all, ld_all = run((z, functools.partial(restore, site=z, pos=t)))\n"
             "print(f'all heads via hook_z: P(r) = {p_all:.7f}  LD = {ld_all:.7f}  (hook_attn_out: {p:.7f}, {ld:.7f})')\n"
             "assert abs(p_all - p) < 1e-5 and abs(ld_all - ld) < 1e-5\n"
             "n_heads = clean[z].shape[2]\n"
             "heads = [run((z, functools.partial(restore, site=z, pos=t, head=h))) for h in range(n_heads)]\n"
             "plt.figure(figsize=(5, 2.6))\nplt.bar(range(n_heads), [p_h - toolkit.p_corrupt for p_h, _ in heads])\n"
             "plt.axhline(p_all - toolkit.p_corrupt, color='k', ls='--', lw=1, label='all heads')\n"
             "plt.xlabel('head'); plt.ylabel('P_pt(r) - P_*(r)'); plt.legend(fontsize=8)\n"
             "plt.title(f'restore one head of layer {layer} at token {t} ({toolkit.tokens[t]!r})', fontsize=10); plt.tight_layout()"),
]

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


OWN_FACT = [
    ("md", "# Your own fact: trace it, edit it, export it\n\n"
           "Type a fact in the next cell: a prompt that ends where the answer begins, the subject as the prompt writes "
           "it, and the new answer you want. The notebook traces where SmolLM2-135M keeps the fact (causal tracing), "
           "edits it with IntAttn-Edit and with MEMIT (rolling each edit back), compares greedy continuations before "
           "and after, and exports the edited model as a Hugging Face checkpoint that plain `transformers` loads.\n\n"
           "`SMALL = True` (a few minutes on a CPU) traces with 3 noise samples and computes the key statistics from "
           "20 000 WikiText-2 tokens; `SMALL = False` uses the full settings (10 samples, 100 000 tokens)."),
    ("code", "PROMPT = 'The Eiffel Tower is located in the city of'\n"
             "SUBJECT = 'Eiffel Tower'   # as it is written in PROMPT\n"
             "NEW_TARGET = 'Rome'\n"
             "PARAPHRASE = 'The Eiffel Tower can be found in the city of'  # the same fact in other words: should move too\n"
             "UNRELATED = 'The Louvre is located in the city of'           # another fact: should stay\n"
             "SMALL = True"),
    ("code", "import json\nimport tempfile\nfrom pathlib import Path\n\nimport torch\n"
             "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
             "from intattn_tl import load_model\nfrom intattn_tl.locate.balance import aggregate, summarize\n"
             "from intattn_tl.api import edit\nfrom intattn_tl.evaluation.metrics import greedy_continuation\n"
             "from intattn_tl.edit.export import edit_card, export_model\nfrom intattn_tl.api import trace_facts\n"
             "from intattn_tl.config.hparams import load_hparams, tracing_result\n"
             "from intattn_tl.locate.plots import plot_fact, plot_layer_curves\nfrom intattn_tl.locate.tracing import trace_fact\n\n"
             "model = load_model('smollm2-135m')\nN_TOKENS = 10  # length of the greedy continuations compared below"),
    ("md", "## 1. Where does the model keep it? Causal tracing\n\n"
           "`trace_facts` checks the fact (the subject must occur in the prompt) and, when no answer is given, takes the "
           "model's own greedy answer. `trace_fact` adds noise to the subject's embeddings and puts back one clean module "
           "output at each (layer, token): how much of the answer comes back says where the fact is read."),
    ("code", "fact, = trace_facts(model, [(PROMPT, SUBJECT)])\nprint(f'the model answers {fact.attribute!r}')\n"
             "t = trace_fact(model, fact.prompt, fact.subject, fact.attribute, n_samples=3 if SMALL else 10)\n"
             "print(f'P({fact.attribute!r}): clean {t.p_clean:.3f}, subject corrupted {t.p_corrupt:.3f}; logit difference to '\n"
             "      f'{model.tokenizer.decode([t.contrast_token])!r}: clean {t.ld_clean:.2f}, corrupted {t.ld_corrupt:.2f}')"),
    ("code", "plot_fact(t, 'mlp_window'); plot_fact(t, 'attn_window');"),
    ("md", "At the last subject token, single layers and ROME's 10-layer windows. These α and critical layers are this "
           "one fact's; the editors use the model's committed ones, measured on 100 facts. (A fact whose corruption "
           "hardly lowers the logit difference, by less than 1, has no stable normalized LD: its curves stay empty.)"),
    ("code", "ld, prob = aggregate([t], 'ld'), aggregate([t], 'prob')\n"
             "plot_layer_curves(ld, prob, t.kinds, pair=('attn', 'mlp'), title='single layers, last subject token');\n"
             "plot_layer_curves(ld, prob, t.kinds, title=\"ROME's windows, last subject token\");\n"
             "s, committed = summarize([t]), tracing_result(model.name)\n"
             "print(f\"this fact: alpha = {s['alpha']:.3f}, attention layers {s['attn_layers']}, MLP layers {s['mlp_layers']}\")\n"
             "print(f\"committed ({committed['n_facts']} facts): alpha = {committed['alpha']:.3f}, attention layers \"\n"
             "      f\"{committed['attn_layers']}, MLP layers {committed['mlp_layers']}\")"),
    ("md", "## 2. Before the edit: greedy continuations"),
    ("code", "prompts = {'prompt': PROMPT, 'paraphrase': PARAPHRASE, 'unrelated': UNRELATED}\n\n"
             "def continuations(label):\n"
             "    out = {kind: greedy_continuation(model, p, N_TOKENS) for kind, p in prompts.items()}\n"
             "    for kind, text in out.items():\n        print(f'{label:12s} {kind:10s} {text!r}')\n"
             "    return out\n\nbefore = continuations('before')"),
    ("md", "## 3. IntAttn-Edit\n\n`edit` takes the fact as a (prompt, subject, new target) tuple (or a dict with "
           "EasyEdit's names); the answer it replaces is the model's own. It changes W_O at the critical attention layers "
           "and W_out at the critical MLP layers, the target split α : 1 − α."),
    ("code", "overrides = {'mom2_n_samples': 20_000} if SMALL else {}\nrequest = (PROMPT, SUBJECT, NEW_TARGET)\n"
             "intattn = edit(model, [request], 'intattn', hparams=load_hparams('intattn', model.name, overrides))\n"
             "print(f'{intattn.records[0].ground_truth[0]!r} -> {NEW_TARGET!r}; edited weights:', ', '.join(sorted(intattn.deltas)))\n"
             "after_intattn = continuations('IntAttn-Edit')"),
    ("md", "## 4. Export the edited model, load it with plain `transformers`\n\n"
           "`export_model` writes safetensors, the config, the tokenizer and a model card that records the edit. The "
           "reloaded model knows nothing of intattn-tl or TransformerLens; its greedy continuation should be the edited "
           "model's."),
    ("code", "with tempfile.TemporaryDirectory() as tmp:\n"
             "    folder = export_model(model, Path(tmp) / 'edited', [edit_card(intattn)])\n"
             "    print('written:', ', '.join(sorted(p.name for p in folder.iterdir())))\n"
             "    card = json.loads((folder / 'intattn_edits.json').read_text())\n"
             "    hf, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)\n"
             "print('card:', card['edits'][0]['method'], card['edits'][0]['requests'])\n"
             "ids = tok(PROMPT, return_tensors='pt')\nwith torch.no_grad():\n"
             "    out = hf.generate(**ids, max_new_tokens=N_TOKENS, do_sample=False, pad_token_id=tok.eos_token_id)\n"
             "reloaded = tok.decode(out[0, ids['input_ids'].shape[1]:])\n"
             "print(f'plain transformers {reloaded!r}')\nprint(f'toolkit (edited)   {after_intattn[\"prompt\"]!r}')\n"
             "assert reloaded == after_intattn['prompt']"),
    ("md", "## 5. Roll back, then MEMIT on the same fact\n\n`rollback()` restores every edited weight bit for bit; MEMIT "
           "then edits W_out at the critical MLP layers only."),
    ("code", "intattn.rollback()\n"
             "assert {kind: greedy_continuation(model, p, N_TOKENS) for kind, p in prompts.items()} == before\n"
             "memit = edit(model, [request], 'memit', hparams=load_hparams('memit', model.name, overrides))\n"
             "print('edited weights:', ', '.join(sorted(memit.deltas)))\nafter_memit = continuations('MEMIT')\n"
             "memit.rollback()"),
    ("md", "## 6. Side by side"),
    ("code", "for label, out in (('IntAttn-Edit', after_intattn), ('MEMIT', after_memit)):\n"
             "    print(f'{label}: {NEW_TARGET!r} in the continuation of the prompt: {NEW_TARGET in out[\"prompt\"]}, '\n"
             "          f'of the paraphrase: {NEW_TARGET in out[\"paraphrase\"]}; unrelated prompt unchanged: '\n"
             "          f'{out[\"unrelated\"] == before[\"unrelated\"]}')"),
]

NOTEBOOKS = {
    "01_causal_tracing.ipynb": TRACING,
    "02_editing_walkthrough.ipynb": EDITING,
    "03_alpha_balance.ipynb": ALPHA,
    "04_your_fact.ipynb": OWN_FACT,
}


def build(cells, path: Path) -> None:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    for i, cell in enumerate(nb.cells):  # fixed ids: rewriting a notebook changes only what changed
        cell["id"] = f"cell-{i:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _machine_paths() -> list[tuple[str, str]]:
    """(path, stand-in) for this machine's folders that outputs may mention (warnings, file names), longest first."""
    pairs = [(str(HERE.parent), "."), (sys.prefix, "<venv>"), (str(Path.home()), "~")]
    return sorted({p: s for p, s in pairs if len(p) > 1}.items(), key=lambda ps: -len(ps[0]))


PROGRESS = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # a tqdm bar: "desc:  40%|####      | 2/5 [00:01<..."


def _without_progress(text: str) -> str:
    """stderr text without tqdm's bars (explicit `progress=True` calls ignore TQDM_DISABLE)."""
    lines = []
    for line in text.split("\n"):
        parts = line.split("\r")  # a bar redraws itself after carriage returns
        kept = [part for part in parts if not PROGRESS.search(part)]
        if len(kept) < len(parts) and not "".join(kept).strip():
            continue
        lines.append("".join(kept))
    return "\n".join(lines)


def scrub(nb) -> None:
    """Replace this machine's paths in the text outputs and drop progress bars (figures are untouched)."""
    paths = _machine_paths()

    def clean(text):
        joined = "".join(text) if isinstance(text, list) else text
        for path, stand_in in paths:
            joined = joined.replace(path, stand_in)
        return joined

    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for out in cell.outputs:
            if out.get("name") == "stderr":
                out["text"] = _without_progress(clean(out["text"]))
            elif "text" in out:
                out["text"] = clean(out["text"])
            for mime in ("text/plain", "text/html"):
                if mime in out.get("data", {}):
                    out["data"][mime] = clean(out["data"][mime])
            if "traceback" in out:
                out["traceback"] = [clean(line) for line in out["traceback"]]
        cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr" or o["text"].strip()]


def execute(path: Path, timeout: int) -> None:
    """Run `path` top to bottom in the `python3` kernel with notebooks/ as its folder, and save it with outputs."""
    from nbclient import NotebookClient  # the dev extra; writing the notebooks needs only nbformat

    # the kernel inherits the environment: no progress bars (tqdm's and the Hugging Face ones) in saved outputs
    # (and not tqdm's note that ipywidgets is missing, which would only draw them)
    os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore:IProgress not found")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    scrub(nb)
    nbformat.write(nb, path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"notebooks to write (default all: {', '.join(NOTEBOOKS)})")
    parser.add_argument("--execute", action="store_true", help="run each notebook and save its outputs")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take (default 1800)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; known: {', '.join(NOTEBOOKS)}")
    for name in args.names or NOTEBOOKS:
        build(NOTEBOOKS[name], HERE / name)
        if args.execute:
            execute(HERE / name, args.timeout)
        print(("executed " if args.execute else "wrote ") + name)
