"""The table figure of a reproduction (the tracing figures are in locate/plots.py)."""

from __future__ import annotations

import matplotlib.pyplot as plt  # headless: matplotlib picks Agg itself; notebooks keep their inline backend


def plot_table(cells: dict, methods, columns, labels: dict | None = None, title: str = ""):
    """A reproduction table as figure: one panel per metric column, one line per method over T."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.2), squeeze=False)
    for ax, (key, name) in zip(axes[0], columns):
        for m in methods:
            pts = sorted((T, c.get(key)) for (mm, T), c in cells.items() if mm == m and c.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=(labels or {}).get(m, m))
        ax.set_xlabel("T (edits)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
