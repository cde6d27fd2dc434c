"""Search strategies on NAS-Bench-201 at equal budgets: many seeds, tables, JSON and a plot.

Each run is one Optuna study (in-memory storage) whose sampler is built by
:func:`llmnas.samplers.build_sampler` on the :class:`~llmnas.space.nb201.NB201Space`; each trial asks
the space for a cell and looks it up in the table. The budget is the number of trials (architecture
evaluations, repeats included for samplers that repeat).

Modes:

- **accuracy** (default): maximise the 12-epoch validation accuracy; a run reports the 200-epoch test
  accuracy of the cell with the best validation accuracy (the first one found, on ties), as the
  NAS-Bench-201 paper does.
- **pareto** (``device``): maximise validation accuracy and minimise latency on ``device``; a run reports
  the hypervolume of the cells found, relative to the hypervolume of all cells (1.0 = the true front),
  both objectives scaled to [0, 1] over the table.
- **cap** (``device`` and ``latency_cap``): maximise validation accuracy among cells with latency <= cap
  (an Optuna constraint); a run reports the test accuracy of the best feasible cell.

The search signal is the table's validation accuracy rounded to ``signal_decimals`` (4) decimals: the
tables hold float32 values, and equal counts of correct images must compare equal (a CIFAR-100
validation set has 5,000 images, so accuracies come in steps of 0.02 %).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from llmnas.benchmarks.nb201 import DATASETS, NB201Table
from llmnas.errors import DataError, RecipeError
from llmnas.samplers import SAMPLERS, build_sampler
from llmnas.space.nb201 import NB201Space

DEFAULT_STRATEGIES = ("random", "tpe", "evolution", "reinforce", "thompson")
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet16-120": "ImageNet16-120"}
#: Published test accuracies (%), mean ± std, at the NAS-Bench-201 paper's budgets (Dong & Yang, ICLR 2020).
PUBLISHED = {
    "optimum (NAS-Bench-201 paper)": {"cifar10": (94.37, None), "cifar100": (73.51, None),
                                      "imagenet16-120": (47.31, None)},
    "REINFORCE (NAS-Bench-201 paper)": {"cifar10": (93.85, 0.37), "cifar100": (71.71, 1.09),
                                        "imagenet16-120": (45.24, 1.18)},
    "random search (NAS-Bench-201 paper)": {"cifar10": (93.70, 0.36)},
}


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
        datasets: data sets from :data:`~llmnas.benchmarks.nb201.DATASETS`.
        strategies: sampler names accepted by :func:`~llmnas.samplers.build_sampler`, or ``LABEL=SAMPLER``
            to run one sampler under several labels with different options (``lstm=reinforce``).
        budget: architecture evaluations (trials) per run.
        seeds: runs per strategy and data set; run ``r`` uses sampler seed ``seed + r``.
        seed: first seed.
        device: latency column for the pareto and cap modes.
        latency_cap: latency limit in ms (cap mode; needs ``device``).
        workers: processes running the runs.
        options: sampler options by strategy label, e.g. ``{"evolution": {"population_size": 20}}``.
        signal_decimals: decimals the validation accuracy is rounded to before the sampler sees it.
    """

    datasets: tuple[str, ...] = DATASETS
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    budget: int = 100
    seeds: int = 100
    seed: int = 0
    device: str | None = None
    latency_cap: float | None = None
    workers: int = 2
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    signal_decimals: int = 4

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(s.partition("=")[0] for s in self.strategies)

    def sampler_of(self, label: str) -> str:
        for s in self.strategies:
            name, sep, sampler = s.partition("=")
            if name == label:
                return sampler if sep else name
        raise KeyError(label)

    @property
    def mode(self) -> str:
        if self.latency_cap is not None:
            return "cap"
        return "pareto" if self.device is not None else "accuracy"

    def validate(self, table: NB201Table) -> None:
        for ds in self.datasets:
            if ds not in DATASETS:
                raise DataError(f"unknown data set {ds!r} (allowed: {', '.join(DATASETS)}, all)")
            table.metric("val12", ds)
            table.metric("test200", ds)
        for label in self.labels:
            if self.sampler_of(label) not in SAMPLERS:
                raise RecipeError(f"unknown strategy {self.sampler_of(label)!r} (allowed: {', '.join(SAMPLERS)})")
        if len(set(self.labels)) != len(self.labels):
            raise RecipeError(f"strategy labels must be distinct: {', '.join(self.labels)}")
        for s in self.options:
            if s not in self.labels:
                raise RecipeError(
                    f"options given for {s!r}, which is not among the strategies ({', '.join(self.labels)})"
                )
        if self.budget < 1 or self.seeds < 1 or self.workers < 1:
            raise RecipeError("budget, seeds and workers must be at least 1")
        if self.latency_cap is not None and self.device is None:
            raise RecipeError("--latency-cap needs --device (the latency column the cap applies to)")
        if self.device is not None:
            table.latency_of(self.device)
        # build each sampler once so that a bad option fails before any run
        directions = ["maximize", "minimize"] if self.mode == "pareto" else ["maximize"]
        for label in self.labels:
            build_sampler(self.sampler_of(label), space=NB201Space(), directions=directions, seed=0,
                          options=self.options.get(label, {}))


@dataclass(frozen=True)
class RunResult:
    """One run: a strategy on a data set with one seed."""

    dataset: str
    strategy: str
    seed: int
    score: float
    """accuracy/cap: 200-epoch test accuracy of the chosen cell (NaN if no feasible cell); pareto: HV ratio."""
    val: float
    """accuracy/cap: the chosen cell's 12-epoch validation accuracy; pareto: NaN."""
    index: int
    """The chosen cell's official index (-1 in pareto mode or without a feasible cell)."""
    distinct: int
    """Distinct cells evaluated."""
    cpu_seconds: float
    """CPU time of the run (sampler, Optuna's bookkeeping and the table look-ups), in seconds."""
    curve: tuple[float, ...]
    """``score`` after each evaluation."""


# ---------------------------------------------------------------------- one run
def run_one(table: NB201Table, config: BenchConfig, dataset: str, strategy: str, seed: int) -> RunResult:
    space = NB201Space()
    mode = config.mode
    val = np.round(table.metric("val12", dataset), config.signal_decimals)
    test = table.metric("test200", dataset)
    latency = table.latency_of(config.device) if config.device is not None else None
    directions = ["maximize", "minimize"] if mode == "pareto" else ["maximize"]
    sampler = build_sampler(config.sampler_of(strategy), space=space, directions=directions, seed=seed,
                            options=config.options.get(strategy, {}))
    study = optuna.create_study(directions=directions, sampler=sampler)
    chosen: list[int] = []

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        i = table.index_of(space.suggest(trial))
        chosen.append(i)
        if mode == "pareto":
            return float(val[i]), float(latency[i])  # type: ignore[index]
        if mode == "cap":
            trial.set_constraint("latency_ms", float(latency[i]) - config.latency_cap)  # type: ignore[index,operator]
        return float(val[i])

    start = time.process_time()  # CPU time: robust to other processes sharing the cores
    study.optimize(objective, n_trials=config.budget)
    seconds = time.process_time() - start
    idx = np.array(chosen)
    if mode == "pareto":
        curve = _hv_curve(val, latency, idx)  # type: ignore[arg-type]
        return RunResult(dataset, strategy, seed, curve[-1], math.nan, -1, len(set(chosen)), seconds, curve)
    ok = np.ones(len(idx), bool) if mode == "accuracy" else latency[idx] <= config.latency_cap  # type: ignore[index]
    masked = np.where(ok, val[idx], -np.inf)
    best_pos = np.array([int(np.argmax(masked[: k + 1])) for k in range(len(idx))])
    feasible_so_far = np.maximum.accumulate(ok)
    curve = tuple(float(test[idx[b]]) if f else math.nan for b, f in zip(best_pos, feasible_so_far, strict=True))
    b = int(best_pos[-1])
    if not feasible_so_far[-1]:
        return RunResult(dataset, strategy, seed, math.nan, math.nan, -1, len(set(chosen)), seconds, curve)
    return RunResult(dataset, strategy, seed, float(test[idx[b]]), float(val[idx[b]]), int(idx[b]),
                     len(set(chosen)), seconds, curve)


def _scaled_front_points(val: np.ndarray, latency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = (val - val.min()) / (val.max() - val.min())
    b = (latency.max() - latency) / (latency.max() - latency.min())
    return a, b


def hypervolume_2d(a: np.ndarray, b: np.ndarray) -> float:
    """Area dominated by points ``(a, b)`` (both maximised, in [0, 1]) above the reference point (0, 0)."""
    order = np.lexsort((-b, -a))
    hv, best_b = 0.0, 0.0
    for i in order:
        if b[i] > best_b:
            hv += a[i] * (b[i] - best_b)
            best_b = b[i]
    return hv


def _hv_curve(val: np.ndarray, latency: np.ndarray, idx: np.ndarray) -> tuple[float, ...]:
    a, b = _scaled_front_points(val, latency)
    total = hypervolume_2d(a, b)
    return tuple(hypervolume_2d(a[idx[: k + 1]], b[idx[: k + 1]]) / total for k in range(len(idx)))


# ---------------------------------------------------------------------- many runs
_WORKER_TABLE: NB201Table | None = None  # set in each worker process by _init_worker (fork: no copy)


def _init_worker(table: NB201Table) -> None:
    global _WORKER_TABLE
    _WORKER_TABLE = table
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run_task(task: tuple[BenchConfig, str, str, int]) -> RunResult:
    assert _WORKER_TABLE is not None
    return run_one(_WORKER_TABLE, *task)


def run_benchmark(table: NB201Table, config: BenchConfig, progress: bool = False) -> list[RunResult]:
    """Every (data set, strategy, seed) run, on ``config.workers`` processes; results in a fixed order."""
    config.validate(table)
    tasks = [(config, ds, s, config.seed + r) for ds in config.datasets for s in config.labels
             for r in range(config.seeds)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: list[RunResult] = []
    if config.workers == 1:
        _init_worker(table)
        iterator: Iterable[RunResult] = map(_run_task, tasks)
        results = list(_progress(iterator, len(tasks), progress))
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(config.workers, initializer=_init_worker, initargs=(table,)) as pool:
            results = list(_progress(pool.imap_unordered(_run_task, tasks, chunksize=4), len(tasks), progress))
    order = {(ds, s, seed): k for k, (_, ds, s, seed) in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r.dataset, r.strategy, r.seed)])


def _progress(it: Iterable[RunResult], total: int, show: bool) -> Iterable[RunResult]:
    if not show:
        yield from it
        return
    from tqdm import tqdm

    yield from tqdm(it, total=total, desc="runs", unit="run", leave=False)


# ---------------------------------------------------------------------- reports
def reference_rows(table: NB201Table, config: BenchConfig) -> dict[str, dict[str, float]]:
    """Figures computed from the table: the best test accuracy, and the test accuracy of the best-validation
    cell (exhaustive search on the search signal), within the latency cap in cap mode."""
    rows: dict[str, dict[str, float]] = {"table optimum (best test accuracy)": {},
                                         "exhaustive search on the 12-epoch signal": {}}
    for ds in config.datasets:
        val = np.round(table.metric("val12", ds), config.signal_decimals)
        test = table.metric("test200", ds)
        ok = np.ones(len(val), bool)
        if config.mode == "cap":
            ok = table.latency_of(config.device) <= config.latency_cap  # type: ignore[arg-type,operator]
        rows["table optimum (best test accuracy)"][ds] = float(test[ok].max())
        rows["exhaustive search on the 12-epoch signal"][ds] = float(test[np.flatnonzero(ok)[np.argmax(val[ok])]])
    return rows


def summarize(results: Sequence[RunResult], config: BenchConfig) -> dict[str, Any]:
    """Mean, std and timing per (strategy, data set), mean curves and bands."""
    out: dict[str, Any] = {}
    for s in config.labels:
        for ds in config.datasets:
            runs = [r for r in results if r.strategy == s and r.dataset == ds]
            if not runs:
                continue
            scores = np.array([r.score for r in runs])
            curves = np.array([r.curve for r in runs], dtype=float)
            out[f"{s}/{ds}"] = {
                "strategy": s,
                "dataset": ds,
                "runs": len(runs),
                "mean": float(np.nanmean(scores)) if np.isfinite(scores).any() else math.nan,
                "std": float(np.nanstd(scores)) if np.isfinite(scores).any() else math.nan,
                "missing": int(np.isnan(scores).sum()),
                "distinct_cells": float(np.mean([r.distinct for r in runs])),
                "cpu_ms_per_trial": 1000.0 * float(np.mean([r.cpu_seconds for r in runs])) / config.budget,
                "curve_mean": [round(float(x), 4) for x in _nanmean_cols(curves)],
                "curve_std": [round(float(x), 4) for x in _nanstd_cols(curves)],
            }
    return out


def _nanmean_cols(a: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(c) if np.isfinite(c).any() else math.nan for c in a.T])


def _nanstd_cols(a: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.array([np.nanstd(c) if np.isfinite(c).any() else math.nan for c in a.T])


def markdown_table(summary: dict[str, Any], table: NB201Table, config: BenchConfig) -> str:
    ds_cols = list(config.datasets)
    what = {"accuracy": "200-epoch test accuracy (%) of the best-validation cell",
            "cap": f"test accuracy (%) of the best-validation cell with latency <= {config.latency_cap} ms "
                   f"on {config.device}",
            "pareto": f"hypervolume ratio (validation accuracy vs latency on {config.device}; 1 = true front)"}
    lines = [
        f"NAS-Bench-201, {config.budget} evaluations, {config.seeds} seeds per cell: {what[config.mode]}, "
        "mean ± std.",
        "",
        "| strategy | " + " | ".join(DATASET_TITLES[d] for d in ds_cols) + " | CPU ms/trial |",
        "|---|" + "---:|" * (len(ds_cols) + 1),
    ]
    fmt = "{:.4f} ± {:.4f}" if config.mode == "pareto" else "{:.2f} ± {:.2f}"
    for s in config.labels:
        cells, ms = [], []
        for ds in ds_cols:
            row = summary.get(f"{s}/{ds}")
            if row is None:
                cells.append("")
                continue
            text = fmt.format(row["mean"], row["std"])
            if row["missing"]:
                text += f" ({row['missing']} runs without a feasible cell)"
            cells.append(text)
            ms.append(row["cpu_ms_per_trial"])
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {np.mean(ms):.2f} |")
    if config.mode != "pareto":
        for name, row in reference_rows(table, config).items():
            lines.append(f"| *{name}* | " + " | ".join(f"{row[d]:.2f}" for d in ds_cols) + " | |")
    if config.mode == "accuracy":
        for name, row in PUBLISHED.items():
            cells = []
            for d in ds_cols:
                if d not in row:
                    cells.append("")
                else:
                    mean, std = row[d]
                    cells.append(f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else ""))
            lines.append(f"| *{name}* | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def plot_curves(summary: dict[str, Any], config: BenchConfig, path: Path) -> None:
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
            m, sd = np.array(row["curve_mean"]), np.array(row["curve_std"])
            ax.plot(x, m, label=s)
            ax.fill_between(x, m - sd, m + sd, alpha=0.12)
            k = min(config.budget - 1, max(config.budget // 10, 0))
            if np.isfinite(m[k]):
                lows.append(m[k] - sd[k])
                highs.append(np.nanmax(m[k:] + sd[k:]))
        ax.set_title(DATASET_TITLES[ds])
        ax.set_xlabel("architecture evaluations")
        ax.set_ylabel("hypervolume ratio" if config.mode == "pareto" else "test accuracy of best-val cell (%)")
        if lows:
            pad = 0.05 * (max(highs) - min(lows))
            ax.set_ylim(min(lows), max(highs) + pad)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"NAS-Bench-201: best so far, mean ± std over {config.seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_outputs(
    results: Sequence[RunResult], table: NB201Table, config: BenchConfig, out: Path, extra: dict[str, Any] | None = None
) -> tuple[str, dict[str, Path]]:
    """Write ``nb201.md``, ``nb201.json`` and ``nb201.png`` into ``out``; return the Markdown and the paths."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, config)
    md = markdown_table(summary, table, config)
    stem = {"accuracy": "nb201", "pareto": f"nb201_pareto_{config.device}",
            "cap": f"nb201_cap_{config.device}_{config.latency_cap}ms"}[config.mode]
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    paths["md"].write_text(md)
    payload = {
        "config": {**asdict(config), "mode": config.mode},
        "environment": {"cpus": os.cpu_count(), "optuna": optuna.__version__, **(extra or {})},
        "summary": summary,
        "runs": runs_by_cell(results),
    }
    if config.mode != "pareto":
        payload["reference"] = reference_rows(table, config)
    paths["json"].write_text(dump_json(_finite(payload)))
    plot_curves(summary, config, paths["png"])
    return md, paths


def runs_by_cell(results: Sequence[RunResult]) -> dict[str, dict[str, list]]:
    """Every run, column-wise per ``strategy/dataset``: seeds, scores, chosen cells, ... (one list each)."""
    out: dict[str, dict[str, list]] = {}
    for r in results:
        cell = out.setdefault(f"{r.strategy}/{r.dataset}", {k: [] for k in ("seed", "score", "val", "index",
                                                                             "distinct", "cpu_seconds")})
        for k in cell:
            v = getattr(r, k)
            cell[k].append(round(v, 4) if isinstance(v, float) else v)
    return out


def dump_json(payload: dict[str, Any]) -> str:
    """JSON with one line per summary entry and per run (readable in a diff, small on disk)."""
    parts = []
    for key, value in payload.items():
        if key in ("summary", "runs"):
            body = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                       for k, v in value.items()) + "\n }"
        else:
            body = json.dumps(value)
        parts.append(f" {json.dumps(key)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _finite(obj: Any) -> Any:
    """NaN/inf to ``None`` so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
