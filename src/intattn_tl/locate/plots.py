"""Figures like the paper's: Fig. 1 heatmaps (layer x token class) and Fig. 2 layer curves at the last subject token."""

from __future__ import annotations

import matplotlib.pyplot as plt  # headless: matplotlib picks Agg itself; notebooks keep their inline backend
import numpy as np

from intattn_tl.locate.balance import CLASSES

LABELS = {"resid": "residual", "attn": "attention", "mlp": "MLP", "attn_window": "attention (window)",
          "mlp_window": "MLP (window)"}


def plot_heatmaps(agg: dict, kinds, show=("attn_window", "mlp_window"), title: str = "", metric: str = "normalized LD"):
    """Figure 1: mean effect per (token class, layer), one panel per kind in `show`."""
    fig, axes = plt.subplots(1, len(show), figsize=(4.2 * len(show), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], show):
        grid = agg["mean"][list(kinds).index(kind)].T  # [class, layer]
        im = ax.imshow(grid, aspect="auto", cmap={"attn": "Reds", "mlp": "Greens"}.get(kind.split("_")[0], "Purples"))
        ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=8)
        ax.set_xlabel("layer")
        ax.set_title(f"restore {LABELS[kind]}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, label=metric)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_layer_curves(ld: dict, prob: dict, kinds, pair=("attn_window", "mlp_window"), title: str = ""):
    """Figure 2: normalized LD and probability effect per layer at the last subject token, attn vs MLP, +-1 SE."""
    c = CLASSES.index("last subject")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, agg, label in ((axes[0], ld, "normalized LD"), (axes[1], prob, "P_pt(r) - P_*(r)")):
        for kind, colour in zip(pair, ("tab:red", "tab:green")):
            k = list(kinds).index(kind)
            mean, se = agg["mean"][k, :, c], agg["se"][k, :, c]
            layers = np.arange(len(mean))
            ax.plot(layers, mean, color=colour, label=LABELS[kind])
            ax.fill_between(layers, mean - se, mean + se, color=colour, alpha=0.2)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title or "effect of restoring at the last subject token", fontsize=10)
    fig.tight_layout()
    return fig


def plot_fact(result, kind: str = "resid", metric: str = "ld"):
    """ROME's per-fact picture: effect of restoring `kind` at each (token, layer); subject tokens starred."""
    grid = (result.ld_effect if metric == "ld" else result.prob_effect)[result.kind(kind)].T  # [token, layer]
    s0, s1 = result.subject_span
    labels = [f"{t!r}*" if s0 <= i < s1 else repr(t) for i, t in enumerate(result.tokens)]
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(labels) + 1.2))
    im = ax.imshow(grid, aspect="auto", cmap={"attn": "Reds", "mlp": "Greens"}.get(kind.split("_")[0], "Purples"))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_title(f"restore {LABELS[kind]}: {'normalized LD' if metric == 'ld' else 'P_pt - P_*'}", fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig




def plot_head_heatmaps(mean, positions=("last subject", "last"), title: str = "", metric: str = "normalized LD"):
    """Per-head tracing: mean effect of restoring one head's hook_z, [layer x head], one panel per position.
    A diverging scale centred on 0 per panel: a head can also push the answer down."""
    mean = np.asarray(mean)  # [position, layer, head]
    n_layers, n_heads = mean.shape[1:]
    fig, axes = plt.subplots(1, len(positions), figsize=(1.2 + 0.32 * n_heads * len(positions) + 1.6 * len(positions),
                                                          1.4 + 0.16 * n_layers), squeeze=False)
    for ax, grid, name in zip(axes[0], mean, positions):
        vmax = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
        vmax = vmax or 1.0
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(0, n_heads, max(1, n_heads // 8)))
        ax.set_title(f"restore one head at the {name} token", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.08, label=metric)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
