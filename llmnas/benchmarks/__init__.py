"""Benchmarks of the search strategies on tabular NAS benchmarks (NAS-Bench-201).

- :mod:`~llmnas.benchmarks.nb201`: the tables (:func:`load_nb201`, :func:`load_official`, :class:`NB201Table`);
- :mod:`~llmnas.benchmarks.nb201_score`: how a run and a reference row are scored (validation signal,
  ties, hypervolume);
- :mod:`~llmnas.benchmarks.nb201_run`: running strategies at equal budgets (:class:`BenchConfig`,
  :func:`run_one`, :func:`run_benchmark`);
- :mod:`~llmnas.benchmarks.nb201_report` and :mod:`~llmnas.benchmarks.nb201_plot`: tables, JSON and plots.

Example:
    >>> from llmnas.benchmarks import BenchConfig, load_nb201, run_benchmark, write_outputs   # doctest: +SKIP
    >>> table = load_nb201("../shared/data/nasbench201")                                      # doctest: +SKIP
    >>> config = BenchConfig(datasets=("cifar10",), strategies=("random", "thompson"), seeds=10)  # doctest: +SKIP
    >>> write_outputs(run_benchmark(table, config), table, config, Path("runs/nb201"))        # doctest: +SKIP
"""

from __future__ import annotations

from llmnas.benchmarks.nb201 import DATASET_TITLES, DATASETS, NB201Table, load_nb201, load_official
from llmnas.benchmarks.nb201_plot import plot_curves
from llmnas.benchmarks.nb201_report import (
    PUBLISHED,
    markdown_table,
    reference_rows,
    runs_by_cell,
    summarize,
    write_outputs,
)
from llmnas.benchmarks.nb201_run import DEFAULT_STRATEGIES, SCORES, BenchConfig, RunResult, run_benchmark, run_one
from llmnas.benchmarks.nb201_score import (
    SIGNAL_DECIMALS,
    exhaustive,
    hv_curve,
    hypervolume_2d,
    search_signal,
    tie_curve,
)

__all__ = [
    "DATASETS",
    "DATASET_TITLES",
    "DEFAULT_STRATEGIES",
    "PUBLISHED",
    "SCORES",
    "SIGNAL_DECIMALS",
    "BenchConfig",
    "NB201Table",
    "RunResult",
    "exhaustive",
    "hv_curve",
    "hypervolume_2d",
    "load_nb201",
    "load_official",
    "markdown_table",
    "plot_curves",
    "reference_rows",
    "run_benchmark",
    "run_one",
    "runs_by_cell",
    "search_signal",
    "summarize",
    "tie_curve",
    "write_outputs",
]
