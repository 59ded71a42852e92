"""Accuracy matrices R[i][j] (after step i, on domain j) as one PNG of small heatmaps."""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trainer.common.artifacts import atomic_savefig  # noqa: E402


def matrices_png(path: Path, matrices: Mapping[str, Sequence[Sequence[float | None]]],
                 domains: Sequence[str]) -> None:
    """One panel per recipe; blank cells are domains not seen yet at that step."""
    cols = min(4, len(matrices))
    rows = math.ceil(len(matrices) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(matrices):]:
        ax.axis("off")
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        values = [[math.nan if v is None else 100 * v for v in row] for row in matrix]
        ax.imshow(values, vmin=30, vmax=90, cmap="viridis")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if v < 65 else "black")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(range(len(domains)), domains, fontsize=7)
        ax.set_yticks(range(len(matrix)), [f"after {d}" for d in domains[: len(matrix)]],
                      fontsize=7)
    fig.suptitle("Test accuracy (%) on each domain after each step, mean over seeds", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
