"""Plotting NAS-Bench-201 benchmark runs: best-so-far curves, mean ± std over seeds, one panel per data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmnas.benchmarks.nb201 import DATASET_TITLES
from llmnas.benchmarks.nb201_run import BenchConfig


def plot_curves(summary: dict[str, Any], config: BenchConfig, path: Path, ylabel: str = "score") -> None:
    """Write the mean best-so-far curve and its ±1 std band of every strategy to ``path`` (PNG).

    The y range starts at the lowest band after 10 % of the budget, so the early, steep part of the
    curves does not flatten the part where the strategies differ.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(config.datasets), figsize=(5 * len(config.datasets), 4), squeeze=False)
    x = np.arange(1, config.budget + 1)
    for ax, ds in zip(axes[0], config.datasets, strict=True):
        lows: list[float] = []
        highs: list[float] = []
        for s in config.labels:
            row = summary.get(f"{s}/{ds}")
            if row is None:
                continue
            m, sd = np.array(row["curve_mean"], dtype=float), np.array(row["curve_std"], dtype=float)
            ax.plot(x, m, label=s)
            ax.fill_between(x, m - sd, m + sd, alpha=0.12)
            k = min(config.budget - 1, max(config.budget // 10, 0))
            if np.isfinite(m[k]):
                lows.append(m[k] - sd[k])
                highs.append(np.nanmax(m[k:] + sd[k:]))
        ax.set_title(DATASET_TITLES[ds])
        ax.set_xlabel("architecture evaluations")
        ax.set_ylabel(ylabel)
        if lows:
            pad = 0.05 * (max(highs) - min(lows)) or 0.5  # all curves flat: still a visible range
            ax.set_ylim(min(lows), max(highs) + pad)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"NAS-Bench-201: best so far, mean ± std over {config.seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
