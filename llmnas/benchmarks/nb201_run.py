"""Running search strategies on NAS-Bench-201 at equal budgets: :class:`BenchConfig`, :func:`run_one`,
:func:`run_benchmark`.

Each run is one Optuna study (in-memory storage) whose sampler is built by
:func:`llmnas.samplers.build_sampler` on the :class:`~llmnas.space.nb201.NB201Space`; each trial asks
the space for a cell and looks it up in the table. The budget is the number of trials (architecture
evaluations, repeats included for samplers that repeat).

Modes:

- **accuracy** (default): maximise the 12-epoch validation accuracy; a run reports the expected 200-epoch
  test accuracy over the tied best-validation cells it evaluated (:mod:`llmnas.benchmarks.nb201_score`).
- **pareto** (``device``): maximise validation accuracy and minimise latency on ``device``; a run reports
  the hypervolume of the cells found, relative to the hypervolume of all cells (1.0 = the true front),
  both objectives scaled to [0, 1] over the table.
- **cap** (``device`` and ``latency_cap``): maximise validation accuracy among cells with latency <= cap
  (an Optuna constraint); a run reports the expected test accuracy over the tied best feasible cells.

With ``score="val"`` the accuracy and cap modes report the best validation accuracy found instead (the
search signal itself), which is what tuning a sampler may look at without touching the test sets.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from llmnas.benchmarks.nb201 import DATASETS, NB201Table, is_complete
from llmnas.benchmarks.nb201_score import SIGNAL_DECIMALS, hv_curve, search_signal, tie_curve
from llmnas.errors import DataError, RecipeError
from llmnas.samplers import SAMPLERS, build_sampler
from llmnas.space.nb201 import N_CELLS, NB201Space

DEFAULT_STRATEGIES = ("random", "tpe", "evolution", "reinforce", "thompson")
SCORES = ("test", "val")
#: Largest seed Optuna's and numpy's generators accept.
MAX_SEED = 2**32 - 1
#: Decimals the signal may be rounded to: beyond 6 the float32 noise of the tables splits equal counts.
MAX_SIGNAL_DECIMALS = 6


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
        score: what a run reports in the accuracy and cap modes: ``"test"`` (expected 200-epoch test
            accuracy over the tied best-validation cells) or ``"val"`` (the best validation accuracy).
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
    signal_decimals: int = SIGNAL_DECIMALS
    score: str = "test"

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
        """Check every setting against ``table`` so that a bad one fails before any run.

        Raises:
            RecipeError: a bad setting (the message names the option and its value, and what is allowed).
            DataError: a data set, metric or latency column the table lacks, or a table without every cell.
        """
        self._validate_numbers()
        self._validate_datasets(table)
        self._validate_strategies()
        self._validate_latency(table)
        # build each sampler once so that a bad option fails before any run
        directions = ["maximize", "minimize"] if self.mode == "pareto" else ["maximize"]
        for label in self.labels:
            options = self.options.get(label, {})
            try:
                build_sampler(self.sampler_of(label), space=NB201Space(), directions=directions, seed=0,
                              options=options)
            except RecipeError as e:
                given = ", ".join(f"{label}.{k}={v!r}" for k, v in options.items())
                raise RecipeError(f"--option {given}: {e}" if given else f"--strategies {label}: {e}") from None

    def _validate_numbers(self) -> None:
        for name, value in (("budget", self.budget), ("seeds", self.seeds), ("workers", self.workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"--{name} {value!r}: must be an integer of at least 1")
        last = MAX_SEED - self.seeds + 1
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= last:
            raise RecipeError(f"--seed {self.seed!r}: the seeds {self.seed}..{self.seed + self.seeds - 1} must lie in "
                              f"0..{MAX_SEED} (--seeds {self.seeds})")
        if not 0 <= self.signal_decimals <= MAX_SIGNAL_DECIMALS:
            raise RecipeError(f"--signal-decimals {self.signal_decimals}: must be in 0..{MAX_SIGNAL_DECIMALS} "
                              f"(default {SIGNAL_DECIMALS}: equal image counts tie, different ones do not)")
        if self.score not in SCORES:
            raise RecipeError(f"--score {self.score!r}: must be one of {', '.join(SCORES)}")
        if self.score != "test" and self.mode == "pareto":
            raise RecipeError(f"--score {self.score}: applies to the accuracy and cap modes; with --device and no "
                              "--latency-cap the hypervolume is scored, which reads the validation signal already")

    def _validate_datasets(self, table: NB201Table) -> None:
        if not self.datasets:
            raise RecipeError(f"--dataset: names no data set (allowed: {', '.join(DATASETS)}, all)")
        if len(set(self.datasets)) != len(self.datasets):
            raise RecipeError(f"--dataset {','.join(self.datasets)}: names a data set twice")
        for ds in self.datasets:
            if ds not in DATASETS:
                raise DataError(f"unknown data set {ds!r} (allowed: {', '.join(DATASETS)}, all)")
            table.metric("val12", ds)
            table.metric("test200", ds)
        if not is_complete(table):
            raise DataError(f"{table.source} lists {len(table):,} cells; the benchmark samples the whole space and "
                            f"needs all {N_CELLS:,}")

    def _validate_strategies(self) -> None:
        if not self.strategies:
            raise RecipeError(f"--strategies: names no strategy (allowed: {', '.join(SAMPLERS)}, each optionally "
                              "as LABEL=SAMPLER)")
        for s, label in zip(self.strategies, self.labels, strict=True):
            if not label:
                raise RecipeError(f"--strategies: {s!r} has an empty label (write LABEL=SAMPLER, e.g. lstm=reinforce)")
            if self.sampler_of(label) not in SAMPLERS:
                raise RecipeError(f"--strategies: unknown strategy {self.sampler_of(label)!r} "
                                  f"(allowed: {', '.join(SAMPLERS)})")
        if len(set(self.labels)) != len(self.labels):
            raise RecipeError(f"--strategies: labels must be distinct: {', '.join(self.labels)}")
        for s in self.options:
            if s not in self.labels:
                raise RecipeError(
                    f"--option: options given for {s!r}, which is not among the strategies ({', '.join(self.labels)})"
                )

    def _validate_latency(self, table: NB201Table) -> None:
        if self.latency_cap is not None and self.device is None:
            raise RecipeError("--latency-cap needs --device (the latency column the cap applies to)")
        if self.device is None:
            return
        latency = table.latency_of(self.device)
        cap = self.latency_cap
        if cap is None:
            return
        fastest = float(latency.min())
        if not math.isfinite(cap) or cap < fastest:
            raise RecipeError(
                f"--latency-cap {cap}: no cell of {table.source} runs within {cap} ms on {self.device}; the cap "
                f"must be a number of at least {fastest:.4g} ms (the fastest cell; the slowest takes "
                f"{float(latency.max()):.4g} ms)"
            )


@dataclass(frozen=True)
class RunResult:
    """One run: a strategy on a data set with one seed."""

    dataset: str
    strategy: str
    seed: int
    score: float
    """accuracy/cap: the expected reported value (test accuracy, or validation with ``score="val"``) over the
    tied best cells (NaN if no feasible cell); pareto: HV ratio."""
    val: float
    """accuracy/cap: the best validation accuracy (signal) found; pareto: NaN."""
    index: int
    """The first tied best cell found (official index; -1 in pareto mode or without a feasible cell)."""
    ties: int
    """Distinct tied best cells the run evaluated (0 in pareto mode or without a feasible cell)."""
    distinct: int
    """Distinct cells evaluated."""
    cpu_seconds: float
    """CPU time of the run (sampler, Optuna's bookkeeping and the table look-ups), in seconds."""
    curve: tuple[float, ...]
    """``score`` after each evaluation."""


def run_one(table: NB201Table, config: BenchConfig, dataset: str, strategy: str, seed: int) -> RunResult:
    """One Optuna study of ``strategy`` on ``dataset`` with sampler seed ``seed``, scored by the tie rule."""
    space = NB201Space()
    mode = config.mode
    val = search_signal(table.metric("val12", dataset), config.signal_decimals)
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
    order = np.array(chosen)
    distinct = len(set(chosen))
    if mode == "pareto":
        curve = hv_curve(val, latency, order)  # type: ignore[arg-type]
        return RunResult(dataset, strategy, seed, curve[-1], math.nan, -1, 0, distinct, seconds, curve)
    report = val if config.score == "val" else table.metric("test200", dataset)
    feasible = None if mode == "accuracy" else latency <= config.latency_cap  # type: ignore[operator]
    curve, tied = tie_curve(val, report, order, feasible)
    if not tied:
        return RunResult(dataset, strategy, seed, math.nan, math.nan, -1, 0, distinct, seconds, curve)
    return RunResult(dataset, strategy, seed, curve[-1], float(val[tied[0]]), tied[0], len(tied), distinct,
                     seconds, curve)


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
