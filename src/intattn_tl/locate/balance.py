"""From many traced facts to the editor's inputs: token-class averages, critical layers and alpha.

Token classes follow ROME's summary (Meng et al. 2022, Fig. 2): first / middle / last subject token,
first subsequent token, further tokens, last token. A class averages every token in it over every fact
(middle and further tokens each count once), so its standard error is std / sqrt(count).
alpha = sum_attn LD / (sum_mlp LD + sum_attn LD), each sum over that module's critical layers, from
the normalized-LD layer curves at the last subject token.

The normalized LD divides by LD_clean - LD_*, the drop the corruption causes. A fact whose drop is tiny
(the noise hardly changes its answer) gives huge values of either sign that swamp a mean over 100 facts
(on SmolLM2 one fact with a drop of 0.04 logits moved the MLP peak from layers 1-5 to 9-13). So LD
averages leave out facts with a drop below `min_ld_gap` logits (default 1.0) and report how many;
probability averages keep every fact.
"""

from __future__ import annotations

import warnings

import numpy as np
from jaxtyping import Float

from intattn_tl.locate.tracing import MIN_LD_GAP, TraceError, TraceResult, ld_facts

CLASSES = ("first subject", "middle subject", "last subject", "first subsequent", "further", "last")


def token_classes(span: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """ROME's token classes for a prompt of n_tokens with the subject at [start, end)."""
    first, end = span
    last_subj, last = end - 1, n_tokens - 1
    return {
        "first subject": [first],
        "middle subject": list(range(first + 1, last_subj)),
        "last subject": [last_subj],
        "first subsequent": [end] if end < n_tokens else [],
        "further": list(range(end + 1, last)),
        "last": [last],
    }


def class_values(result: TraceResult, metric: str = "ld") -> list[Float[np.ndarray, "kind layer n"]]:
    """Per class, the fact's effect values of the class's tokens: [kind, layer, n_tokens_in_class]."""
    grid = {"ld": result.ld_effect, "prob": result.prob_effect}[metric]
    return [grid[:, :, idx] for idx in token_classes(result.subject_span, len(result.tokens)).values()]


def aggregate(results: list[TraceResult], metric: str = "ld", min_ld_gap: float = MIN_LD_GAP) -> dict[str, np.ndarray]:
    """Mean, standard error and count per [kind, layer, class] over facts (NaN effects are left out).

    For metric "ld", facts with LD_clean - LD_* < min_ld_gap are left out (module docstring); "n_facts" says
    how many facts were averaged.
    """
    if not results:
        raise TraceError("no traced facts to aggregate")
    if metric == "ld":
        results = ld_facts(results, min_ld_gap)
    kinds = results[0].kinds
    if any(r.kinds != kinds for r in results):
        raise TraceError("all results must trace the same kinds")
    per_class = [np.concatenate([class_values(r, metric)[c] for r in results], axis=-1) for c in range(len(CLASSES))]
    with warnings.catch_warnings():  # empty classes (e.g. no middle subject token) are NaN on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.stack([np.nanmean(v, -1) if v.shape[-1] else np.full(v.shape[:2], np.nan) for v in per_class], -1)
        std = np.stack([np.nanstd(v, -1, ddof=1) if v.shape[-1] > 1 else np.full(v.shape[:2], np.nan) for v in per_class], -1)
    count = np.stack([np.sum(~np.isnan(v), -1) for v in per_class], -1)
    return {"mean": mean, "se": std / np.sqrt(np.maximum(count, 1)), "count": count, "n_facts": len(results)}


def critical_layers(curve: Float[np.ndarray, "layer"], width: int) -> list[int]:
    """The `width` consecutive layers with the largest summed effect (MEMIT edits a contiguous range)."""
    n = len(curve)
    if not 1 <= width <= n:
        raise TraceError(f"layer width must be in 1..{n}, got {width}")
    sums = [np.nansum(curve[i : i + width]) for i in range(n - width + 1)]
    best = int(np.argmax(sums))
    return list(range(best, best + width))


def balance_factor(
    attn_curve: Float[np.ndarray, "layer"], mlp_curve: Float[np.ndarray, "layer"], attn_layers, mlp_layers
) -> float:
    """alpha = sum_attn / (sum_mlp + sum_attn); negative sums count as 0 (a module that hurts gets no share)."""
    n = len(attn_curve)
    for name, layers in (("attn_layers", attn_layers), ("mlp_layers", mlp_layers)):
        if not layers or any(not 0 <= int(j) < n for j in layers):
            raise TraceError(f"{name} must be a non-empty list of layers in 0..{n - 1}, got {list(layers)}")
    a = max(0.0, float(np.nansum(attn_curve[list(attn_layers)])))
    m = max(0.0, float(np.nansum(mlp_curve[list(mlp_layers)])))
    if a + m == 0:
        raise TraceError("attention and MLP effects are both <= 0 on the chosen layers; alpha is undefined")
    return a / (a + m)


def summarize(
    results: list[TraceResult], *, attn_width: int = 3, mlp_width: int = 5, window: bool = True,
    attn_layers=None, mlp_layers=None, min_ld_gap: float = MIN_LD_GAP,
) -> dict:
    """alpha and critical layers from the normalized-LD curves at the last subject token.

    `window=True` uses ROME's windowed restorations (attn_window / mlp_window), else single layers.
    Explicit `attn_layers` / `mlp_layers` override the automatic choice.
    """
    agg = aggregate(results, "ld", min_ld_gap)
    kinds = results[0].kinds
    attn_kind, mlp_kind = ("attn_window", "mlp_window") if window else ("attn", "mlp")
    missing = [k for k in (attn_kind, mlp_kind) if k not in kinds]
    if missing:
        raise TraceError(f"results lack kinds {missing}; trace them to summarize")
    last_subj = CLASSES.index("last subject")
    attn_curve = agg["mean"][kinds.index(attn_kind), :, last_subj]
    mlp_curve = agg["mean"][kinds.index(mlp_kind), :, last_subj]
    attn_layers = list(attn_layers) if attn_layers is not None else critical_layers(attn_curve, attn_width)
    mlp_layers = list(mlp_layers) if mlp_layers is not None else critical_layers(mlp_curve, mlp_width)
    return {
        "alpha": balance_factor(attn_curve, mlp_curve, attn_layers, mlp_layers),
        "attn_layers": attn_layers,
        "mlp_layers": mlp_layers,
        "curves": {"attn": attn_curve.tolist(), "mlp": mlp_curve.tolist(), "kinds": [attn_kind, mlp_kind]},
        "n_facts_ld": agg["n_facts"],
    }
