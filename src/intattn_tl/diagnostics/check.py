"""The checks of `intattn check --model M`: what to run before trusting any number the toolkit prints for a model.

Each check is one row with the number it measured and the bar it must clear. Mechanics first (hook aliases,
the edited matrices reproduce the hooked outputs, bridge logits equal HF's, the tokenizer), then on a few
WikiData_counterfact records: optimised targets make the model say target_new, a single ROME edit and a
MEMIT batch succeed, and rollback restores every weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import xxhash
from torch import Tensor

from intattn_tl.api import edit
from intattn_tl.config.hparams import load_hparams
from intattn_tl.edit.chain import edit_prefixes, target_hparams, targets_at
from intattn_tl.edit.keys import flat_heads
from intattn_tl.edit.targets import injected_accuracy, target_deltas
from intattn_tl.edit.transaction import EditState
from intattn_tl.evaluation.metrics import answer_argmax, queries, token_accuracy, tokenize
from intattn_tl.model.devices import named_stored
from intattn_tl.model.registry import KNOWN_MODELS, PROBE
from intattn_tl.model.tokens import answer_ids, subject_span

HOOK_SITES = ("hook_resid_mid",)  # a site only some families have (parallel blocks have no resid_mid)
SITES = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",
         "hook_resid_post")


TARGET_MIN = 0.9  # mean share of target_new tokens the injected targets make the argmax


ROME_MIN = 0.9  # mean edit success of single ROME edits


MEMIT_MIN = 0.8  # mean edit success of one MEMIT batch (the records share its layers, so a lower bar)


TEXTS = ("The Eiffel Tower is located in the city of", "Python is a programming language created by")


@dataclass
class Row:
    check: str
    measured: str
    bar: str
    ok: bool


def tolerance(dtype: torch.dtype) -> float:
    """Relative error allowed between two computations of the same product: rounding, not a different matrix."""
    return max(1e-5, 4 * torch.finfo(dtype).eps)


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def capture(model, ids: Tensor, names: list[str]) -> dict[str, Tensor]:
    """Activations at the hook aliases `names` that fired (a missing alias is simply absent)."""
    seen: dict[str, Tensor] = {}

    def make(name):  # the bridge reports the underlying hook name, so close over the alias
        def hook(x, hook):
            seen[name] = x.detach().clone()
            return x
        return hook

    available = set(model.bridge.hook_dict)
    with torch.no_grad():
        model.bridge.run_with_hooks(ids, fwd_hooks=[(n, make(n)) for n in names if n in available])
    return seen


def expected_shapes(model, ids: Tensor) -> dict[str, tuple[int, ...]]:
    s, (b, t) = model.spec, ids.shape
    shapes = {"hook_embed": (b, t, s.d_model)}
    sites = [site for site in SITES if f"blocks.{{l}}.{site}" in s.family.hooks or site not in HOOK_SITES]
    for l in range(s.n_layers):
        for site in sites:
            last = {"attn.hook_z": (s.n_heads, s.d_head), "mlp.hook_post": (s.d_mlp,)}.get(site, (s.d_model,))
            shapes[f"blocks.{l}.{site}"] = (b, t, *last)
    return shapes


def check_hooks(model, ids: Tensor) -> tuple[Row, dict[str, Tensor]]:
    want = expected_shapes(model, ids)
    acts = capture(model, ids, list(want))
    good = [n for n, shape in want.items() if n in acts and tuple(acts[n].shape) == shape]
    bad = [n for n in want if n not in good]
    measured = f"{len(good)}/{len(want)} fire with the expected shape" + (f"; first bad: {bad[0]}" if bad else "")
    return Row("hook aliases", measured, "all", not bad), acts


def through_post_norm(model, kind: str, layer: int, out: Tensor) -> Tensor:
    """What a module adds to the residual given W's output (Gemma-3 passes it through an RMSNorm first)."""
    norm = model.spec.family.post_norm(kind, layer)
    if norm is None:
        return out
    with torch.no_grad():
        return norm(out)


def check_projection(model, acts: dict[str, Tensor], kind: str) -> Row:
    """`spec.w_out[l]` (`spec.w_o[l]`) maps mlp.hook_post (attn.hook_z) to hook_mlp_out (hook_attn_out)."""
    key, out = ("mlp.hook_post", "hook_mlp_out") if kind == "w_out" else ("attn.hook_z", "hook_attn_out")
    worst, where = 0.0, 0
    for l, W in enumerate(getattr(model.spec, kind)):
        k, o = acts.get(f"blocks.{l}.{key}"), acts.get(f"blocks.{l}.{out}")
        if k is None or o is None:
            return Row(f"spec.{kind} -> {out}", f"layer {l}: hook missing", "present", False)
        with torch.no_grad():
            bias = model.spec.family.bias(kind, l)  # the edit changes W only; the bias adds the same either way
            out_ = flat_heads(f"blocks.{l}.{key}", k) @ W.T
            err = rel_err(through_post_norm(model, kind, l, out_ if bias is None else out_ + bias), o)
        if not err <= worst:  # NaN counts as worst
            worst, where = err, l
    tol = tolerance(model.spec.w_out[0].dtype)
    via = " (through the post-norm)" if model.spec.family.post_norm(kind, 0) is not None else ""
    return Row(f"spec.{kind} -> {out}{via}", f"max rel. error {worst:.2e} (layer {where})", f"<= {tol:.0e}",
               worst <= tol)


def check_logits(model, ids: Tensor) -> Row:
    with torch.no_grad():
        bridge, hf = model.bridge(ids), model.hf_model(ids).logits
    err = float((bridge.float() - hf.float()).abs().max() / hf.float().abs().max())
    tol = tolerance(hf.dtype)
    return Row("bridge logits == HF logits", f"max |diff| / max |logit| = {err:.2e}", f"<= {tol:.0e}", err <= tol)


def check_tokenizer(model) -> Row:
    """Recorded probe ids (known models); a subject span and an answer that decode back to themselves."""

    tok, problems = model.tokenizer, []
    ids = list(tok(PROBE).input_ids)
    want = getattr(KNOWN_MODELS.get(model.name), "probe_ids", ())
    if want and tuple(ids) != tuple(want):
        problems.append(f"probe ids {ids[:12]} != recorded {list(want)}")
    start, end = subject_span(tok, PROBE, "Eiffel Tower")
    if tok.decode(ids[start:end]).strip() != "Eiffel Tower":
        problems.append(f"subject span decodes to {tok.decode(ids[start:end])!r}")
    answer = tok.decode(answer_ids(tok, PROBE, "Paris"))
    if answer.strip() != "Paris":
        problems.append(f"answer decodes to {answer!r}")
    basis = "matches the recorded probe ids" if want else "no recorded probe ids (not a known model)"
    measured = "; ".join(problems) if problems else f"{len(ids)} tokens, {basis}; span and answer round-trip"
    return Row("tokenizer probe", measured, "round-trip", not problems)


def edit_success(model, records) -> Tensor:
    """EasyEdit's Edit Succ. per record: share of target_new tokens that are the argmax on the prompt."""

    qs = queries(records, ("edit",))
    pairs = tokenize(model, qs, records)
    return torch.tensor([token_accuracy(p, a) for p, (_, a) in zip(answer_argmax(model, pairs), pairs)])


def param_hashes(model) -> dict[str, str]:
    """A content hash per parameter: compares the weights before and after without a second copy."""

    return {n: xxhash.xxh3_128(p.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy()).hexdigest()
            for n, p in named_stored(model.hf_model)}  # offloaded weights too, not their meta placeholders


def check_target(model, records, hp, state) -> Row:
    layer = hp.target_layer(model)
    _, deltas = targets_at(model, records, layer, hp, edit_prefixes(model, hp, state))
    acc = injected_accuracy(model, records, layer, deltas)
    worst = int(acc.argmin())
    return Row(f"targets at layer {layer} -> target_new", f"{float(acc.mean()):.1%} of target tokens "
               f"(worst: {records[worst].id} {float(acc[worst]):.0%})", f">= {TARGET_MIN:.0%}",
               float(acc.mean()) >= TARGET_MIN)


def check_rome(model, records, hp, state) -> Row:
    # One batched optimisation fills the disk cache the single edits then read: the same deltas (records
    # are optimised independently inside a batch), several times faster than ten separate optimisations.
    target_deltas(model, records, hp.layer(model), target_hparams(hp), prefixes=edit_prefixes(model, hp, state),
                  kind="w_out")
    scores = []
    for r in records:
        result = edit(model, [r], "rome", hp, state)
        try:
            scores.append(float(edit_success(model, [r])[0]))
        finally:
            result.rollback()
    mean = sum(scores) / len(scores)
    return Row(f"ROME, {len(records)} single edits (layer {hp.layer(model)})",
               f"edit success {mean:.1%} (min {min(scores):.0%})", f">= {ROME_MIN:.0%}", mean >= ROME_MIN)


def check_memit(model, records, hp, state) -> Row:
    before = edit_success(model, records)
    result = edit(model, records, "memit", hp, state)
    try:
        after = edit_success(model, records)
    finally:
        result.rollback()
    mean = float(after.mean())
    return Row(f"MEMIT, one batch of {len(records)} (layers {hp.resolved_layers(model)})",
               f"edit success {float(before.mean()):.1%} -> {mean:.1%}", f">= {MEMIT_MIN:.0%}", mean >= MEMIT_MIN)


def check_rollback(model, ids: Tensor, hashes: dict[str, str], logits: Tensor) -> Row:
    changed = [n for n, h in param_hashes(model).items() if hashes.get(n) != h]
    with torch.no_grad():
        same = torch.equal(model.bridge(ids), logits)
    measured = f"{len(changed)}/{len(hashes)} tensors differ" + (f" (first: {changed[0]})" if changed else "")
    return Row("rollback after ROME + MEMIT", measured + f"; logits {'identical' if same else 'DIFFER'}",
               "bit-exact", not changed and same)


def edit_checks(model, records, overrides: dict) -> list[Row]:
    """`overrides` go to both methods' hyperparameters (e.g. a smaller mom2_n_samples than their YAML)."""

    ids = probe_batch(model)
    with torch.no_grad():
        logits = model.bridge(ids)
    hashes = param_hashes(model)
    memit, rome = load_hparams("memit", model.name, overrides), load_hparams("rome", model.name, overrides)
    state = EditState()  # prefixes and statistics computed once, from the unedited weights
    rows = [guarded(name, fn, model, records, hp, state) for name, fn, hp in
            (("targets -> target_new", check_target, memit), ("ROME single edits", check_rome, rome),
             ("MEMIT batch", check_memit, memit))]
    return rows + [check_rollback(model, ids, hashes, logits)]


def guarded(name: str, fn, *args) -> Row:
    """A check that raised fails with the error as its measurement; the remaining checks still run."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001  (any error is a failed check, reported in the table)
        return Row(name, f"error: {type(err).__name__}: {str(err)[:120]}", "no error", False)


def probe_batch(model) -> Tensor:
    """TEXTS, cut to the shortest one's length: no padding, so every position is real text."""
    seqs = [model.tokenizer(t).input_ids for t in TEXTS]
    n = min(len(s) for s in seqs)
    return torch.tensor([s[:n] for s in seqs], device=model.device)


def run_checks(model, records, overrides: dict | None = None) -> list[Row]:
    ids = probe_batch(model)
    hooks, acts = check_hooks(model, ids)
    rows = [hooks, check_projection(model, acts, "w_out"), check_projection(model, acts, "w_o"),
            check_logits(model, ids), check_tokenizer(model)]
    return rows + (edit_checks(model, records, overrides or {}) if records else [])


def format_rows(rows: list[Row]) -> str:
    head = ("check", "measured", "bar", "")
    cells = [head] + [(r.check, r.measured, r.bar, "pass" if r.ok else "FAIL") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["| " + " | ".join(c[i].ljust(widths[i]) for i in range(4)) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
