"""Reporting NAS-Bench-201 benchmark runs: summaries, reference rows, the Markdown table and the JSON.

Every figure here follows the scoring rule of :mod:`llmnas.benchmarks.nb201_score`: the runs' scores
come scored from :func:`~llmnas.benchmarks.nb201_run.run_one`, and the reference rows computed from the
table (:func:`reference_rows`) are scored by the same rule.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from llmnas.benchmarks.nb201 import DATASET_TITLES, NB201Table
from llmnas.benchmarks.nb201_plot import plot_curves
from llmnas.benchmarks.nb201_run import BenchConfig, RunResult
from llmnas.benchmarks.nb201_score import exhaustive, search_signal

#: Published test accuracies (%), mean ± std, at the NAS-Bench-201 paper's budgets (Dong & Yang, ICLR 2020).
PUBLISHED = {
    "optimum (NAS-Bench-201 paper)": {"cifar10": (94.37, None), "cifar100": (73.51, None),
                                      "imagenet16-120": (47.31, None)},
    "REINFORCE (NAS-Bench-201 paper)": {"cifar10": (93.85, 0.37), "cifar100": (71.71, 1.09),
                                        "imagenet16-120": (45.24, 1.18)},
    "random search (NAS-Bench-201 paper)": {"cifar10": (93.70, 0.36)},
}
EXHAUSTIVE_ROW = "exhaustive search on the 12-epoch signal (expected over its ties)"
OPTIMUM_ROW = "table optimum (best test accuracy)"
BEST_VAL_ROW = "table optimum (best validation accuracy)"


def reference_rows(table: NB201Table, config: BenchConfig) -> dict[str, dict[str, float]]:
    """Figures computed from the table, within the latency cap in cap mode: the best test accuracy, and
    exhaustive search on the signal scored like a run (mean test accuracy over every tied best cell);
    with ``score="val"``, the best validation accuracy."""
    rows: dict[str, dict[str, float]] = {}
    for ds in config.datasets:
        signal = search_signal(table.metric("val12", ds), config.signal_decimals)
        test = table.metric("test200", ds)
        ok = np.ones(len(signal), bool)
        if config.mode == "cap":
            ok = table.latency_of(config.device) <= config.latency_cap  # type: ignore[arg-type,operator]
        if config.score == "val":
            rows.setdefault(BEST_VAL_ROW, {})[ds] = float(signal[ok].max())
            continue
        rows.setdefault(OPTIMUM_ROW, {})[ds] = float(test[ok].max())
        rows.setdefault(EXHAUSTIVE_ROW, {})[ds] = exhaustive(signal, test, ok)[0]
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
                "runs_with_ties": int(sum(r.ties > 1 for r in runs)),
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


def describe_score(config: BenchConfig) -> str:
    """What a run's score is, in words (the table's caption)."""
    if config.mode == "pareto":
        return f"hypervolume ratio (validation accuracy vs latency on {config.device}; 1 = true front)"
    where = ""
    if config.mode == "cap":
        where = f" among cells with latency <= {config.latency_cap} ms on {config.device}"
    if config.score == "val":
        return f"best 12-epoch validation accuracy (%) found{where}"
    return (f"200-epoch test accuracy (%) of the best-validation cell{where}, expected over tied cells "
            f"(validation rounded to {config.signal_decimals} decimals)")


def markdown_table(summary: dict[str, Any], table: NB201Table, config: BenchConfig) -> str:
    ds_cols = list(config.datasets)
    seeds = f"{config.seeds} seeds ({config.seed}–{config.seed + config.seeds - 1})"
    lines = [
        f"NAS-Bench-201, {config.budget} evaluations, {seeds} per cell: {describe_score(config)}, mean ± std.",
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
    if config.mode == "accuracy" and config.score == "test":
        lines += _published_rows(ds_cols)
    return "\n".join(lines) + "\n"


def _published_rows(ds_cols: list[str]) -> list[str]:
    lines = []
    for name, row in PUBLISHED.items():
        cells = []
        for d in ds_cols:
            if d not in row:
                cells.append("")
            else:
                mean, std = row[d]
                cells.append(f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else ""))
        lines.append(f"| *{name}* | " + " | ".join(cells) + " | |")
    return lines


def output_stem(config: BenchConfig) -> str:
    """File name stem of a configuration's outputs (``nb201``, ``nb201_pareto_pixel3``, ...)."""
    stem = {"accuracy": "nb201", "pareto": f"nb201_pareto_{config.device}",
            "cap": f"nb201_cap_{config.device}_{config.latency_cap}ms"}[config.mode]
    return stem + ("_val" if config.score == "val" else "")


def write_outputs(
    results: Sequence[RunResult], table: NB201Table, config: BenchConfig, out: Path, extra: dict[str, Any] | None = None
) -> tuple[str, dict[str, Path]]:
    """Write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` into ``out``; return the Markdown and the paths."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, config)
    md = markdown_table(summary, table, config)
    stem = output_stem(config)
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    paths["md"].write_text(md)
    payload = {
        "config": {**asdict(config), "mode": config.mode},
        "scoring": describe_score(config),
        "environment": {"cpus": os.cpu_count(), "optuna": optuna.__version__, **(extra or {})},
        "summary": summary,
        "runs": runs_by_cell(results),
    }
    if config.mode != "pareto":
        payload["reference"] = reference_rows(table, config)
    paths["json"].write_text(dump_json(_finite(payload)))
    plot_curves(summary, config, paths["png"], ylabel=_ylabel(config))
    return md, paths


def _ylabel(config: BenchConfig) -> str:
    if config.mode == "pareto":
        return "hypervolume ratio"
    return "best validation accuracy (%)" if config.score == "val" else "expected test acc. of best-val cells (%)"


def runs_by_cell(results: Sequence[RunResult]) -> dict[str, dict[str, list]]:
    """Every run, column-wise per ``strategy/dataset``: seeds, scores, chosen cells, ... (one list each)."""
    out: dict[str, dict[str, list]] = {}
    for r in results:
        cell = out.setdefault(f"{r.strategy}/{r.dataset}", {k: [] for k in ("seed", "score", "val", "index", "ties",
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
