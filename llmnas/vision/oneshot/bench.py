"""``llmnas bench nb201-oneshot``: one-shot strategies on real CIFAR-10, found cells looked up in NAS-Bench-201.

Each (strategy, seed) runs :func:`~llmnas.vision.oneshot.search.run_search`; the found cell's 200-epoch
test accuracies on CIFAR-10, CIFAR-100 and ImageNet16-120 come from the table (ground truth, never seen
by a search). :func:`write_outputs` writes ``results.md`` (mean ± std over seeds beside the published
rows), ``runs.json`` (every run: cell, accuracies, wall time, history) and ``search.png``. SPOS runs also
score a fixed set of random cells with inherited weights: their Kendall tau against the table is the
supernet's ranking fidelity.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from llmnas.benchmarks.nb201 import DATASET_TITLES, DATASETS, NB201Table
from llmnas.errors import RecipeError
from llmnas.space.nb201 import NB201Cell
from llmnas.vision.oneshot.config import STRATEGIES, OneShotConfig
from llmnas.vision.oneshot.supernet import PARAMETER_FREE

TITLES = {"darts": "DARTS (first order)", "gdas": "GDAS", "enas": "ENAS", "spos": "SPOS + evolution",
          "drnas": "DrNAS (Dirichlet)", "darts_minus": "DARTS- (auxiliary skip)"}
#: Strategies whose runs end with ``(6, 5)`` op weights (softmax; DrNAS: the Dirichlet mean).
WEIGHTED = ("darts", "gdas", "drnas", "darts_minus")

#: Published NAS-Bench-201 rows (200-epoch test accuracy %, mean ± std; CIFAR-10 / CIFAR-100 / ImageNet16-120).
PUBLISHED: list[tuple[str, tuple[tuple[float, float], ...], str]] = [
    ("DARTS-V1 (first order)", ((54.30, 0.00), (15.61, 0.00), (16.32, 0.00)),
     "Dong & Yang, NAS-Bench-201 (ICLR 2020), Table 5"),
    ("DARTS-V2 (second order)", ((54.30, 0.00), (15.61, 0.00), (16.32, 0.00)),
     "Dong & Yang, NAS-Bench-201 (ICLR 2020), Table 5"),
    ("ENAS", ((53.89, 0.58), (13.96, 2.33), (14.84, 2.10)),
     "NAS-Bench-201 / NATS-Bench, as quoted in shared/data/PROVENANCE.md"),
    ("RSPS (random sampling, shared weights)", ((87.66, 1.69), (58.33, 4.34), (31.14, 3.88)),
     "Dong & Yang, NAS-Bench-201 (ICLR 2020), Table 5"),
    ("GDAS", ((93.61, 0.09), (70.70, 0.30), (41.71, 0.98)),
     "Dong & Yang, NAS-Bench-201 (ICLR 2020), Table 5"),
    ("DrNAS", ((94.36, 0.00), (73.51, 0.00), (46.34, 0.00)),
     "Chen et al., DrNAS (ICLR 2021), Table 3 (NAS-Bench-201)"),
]


def parse_strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise RecipeError(f"--strategies {text!r} names no strategy (allowed: {', '.join(STRATEGIES)})")
    for name in names:
        if name not in STRATEGIES:
            raise RecipeError(f"--strategies: unknown one-shot strategy {name!r} (allowed: {', '.join(STRATEGIES)})")
    if len(set(names)) != len(names):
        raise RecipeError(f"--strategies {text!r} names a strategy twice")
    return names


def cell_record(cell: str, table: NB201Table) -> dict[str, Any]:
    """The found cell's table accuracies and its share of parameter-free ops."""
    i = table.index_of(cell)
    ops = NB201Cell.from_str(cell).ops
    return {"index": i, **{d: float(table.test200[d][i]) for d in DATASETS},
            "parameter_free": sum(op in PARAMETER_FREE for op in ops) / len(ops)}


def fidelity(runs: list[dict[str, Any]], table: NB201Table) -> dict[str, Any] | None:
    """Kendall tau (and Spearman rho) between inherited-weight and 200-epoch table accuracy, per SPOS run."""
    from scipy.stats import kendalltau, spearmanr

    per_run = []
    for run in runs:
        cells = run["extra"].get("fidelity")
        if not cells:
            continue
        acc = [c["acc"] for c in cells]
        out: dict[str, Any] = {"seed": run["seed"], "cells": len(cells)}
        for d in DATASETS:
            truth = [float(table.test200[d][table.index_of(c["cell"])]) for c in cells]
            out[f"tau_{d}"] = float(kendalltau(acc, truth).statistic)
            out[f"rho_{d}"] = float(spearmanr(acc, truth).statistic)
        per_run.append(out)
    return {"runs": per_run} if per_run else None


def _one(args: tuple[str, str, dict[str, Any], int, str | None]) -> dict[str, Any]:
    """Worker: load the images (cached) and run one search."""
    strategy, source, cfg_dict, seed, cache = args
    import optuna

    from llmnas.vision.data import load_images
    from llmnas.vision.oneshot.search import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_images(source, cache_dir=Path(cache) if cache else None)
    cfg = OneShotConfig.from_dict(cfg_dict)
    return run_search(strategy, data, cfg, seed, log=lambda m: print(m, flush=True)).to_dict()


def run_bench(
    source: str | Path,
    table: NB201Table,
    strategies: Sequence[str],
    seeds: Sequence[int],
    cfg: OneShotConfig,
    out: Path,
    *,
    workers: int = 1,
    cache_dir: Path | None = None,
    resume: bool = False,
    report_only: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every (strategy, seed); ``runs.json`` in ``out`` is rewritten after each run (``resume`` keeps the
    runs already there that used the same settings; ``report_only`` keeps them and runs nothing)."""
    cfg.check_strategies(strategies)
    resume = resume or report_only
    path = out / "runs.json"
    if report_only and not path.exists():
        raise RecipeError(f"--report: {path} does not exist (run the benchmark first)")
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = cfg.to_dict()
    runs: list[dict[str, Any]] = []
    if resume and path.exists():
        runs = [r for r in json.loads(path.read_text())["runs"] if same_settings(r["config"], cfg_dict)]
        log(f"resuming: {len(runs)} finished run(s) in {path}")
    done = {(r["strategy"], r["seed"]) for r in runs}
    todo = [(s, seed) for seed in seeds for s in strategies if (s, seed) not in done]  # every strategy early
    if report_only:
        if not runs:
            raise RecipeError(f"--report: no finished run with these settings in {path}")
        todo = []
    jobs = [(s, str(source), cfg_dict, seed, str(cache_dir) if cache_dir else None) for s, seed in todo]

    def add(result: dict[str, Any]) -> None:
        result["table"] = cell_record(result["cell"], table)
        if "argmax_cell" in result["extra"]:
            result["table_argmax"] = cell_record(result["extra"]["argmax_cell"], table)
        runs.append(result)
        _write_json(path, runs)
        t = result["table"]
        log(f"{result['strategy']} seed {result['seed']}: {result['cell']} -> "
            + " / ".join(f"{t[d]:.2f}" for d in DATASETS) + f" ({result['wall_seconds']:.0f} s)")

    if workers <= 1:
        for job in jobs:
            add(_one(job))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for future in as_completed([pool.submit(_one, job) for job in jobs]):
                add(future.result())
    order = {(s, seed): i for i, (s, seed) in enumerate((s, seed) for s in strategies for seed in seeds)}
    kept = [r for r in runs if (r["strategy"], r["seed"]) in order]
    return sorted(kept, key=lambda r: order[(r["strategy"], r["seed"])])


def same_settings(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a finished run's settings are ``current``'s. Settings added since the run was made (absent from
    its stored config, e.g. the DrNAS ones, or epochs of a strategy that did not exist yet) do not count."""
    filled = {**current, **stored, "epochs": {**current.get("epochs", {}), **stored.get("epochs", {})}}
    return filled == current


def _write_json(path: Path, runs: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"runs": runs, **(extra or {})}, indent=1))
    os.replace(tmp, path)


def _pm(values: Sequence[float], digits: int = 2) -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}" if len(a) else "–"


def summary_table(runs: list[dict[str, Any]], table: NB201Table, strategies: Sequence[str]) -> str:
    best = [float(np.max(table.test200[d])) for d in DATASETS]
    head = ("| method | seeds | " + " | ".join(DATASET_TITLES[d] for d in DATASETS)
            + " | search wall time (s) | parameter-free ops in found cells | source |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in strategies:
        rs = [r for r in runs if r["strategy"] == s]
        if not rs:
            continue
        accs = [_pm([r["table"][d] for r in rs]) for d in DATASETS]
        share = 100 * float(np.mean([r["table"]["parameter_free"] for r in rs]))
        lines.append(f"| **{title(s, rs[0]['config'])}** (this run) | {len(rs)} | " + " | ".join(accs)
                     + f" | {_pm([r['wall_seconds'] for r in rs], 0)} | {share:.0f} % | this benchmark |")
    for name, accs, source in PUBLISHED:
        lines.append(f"| {name} (published) | | " + " | ".join(f"{m:.2f} ± {sd:.2f}" for m, sd in accs)
                     + f" | | | {source} |")
    lines.append("| optimal cell in the table | | " + " | ".join(f"{b:.2f}" for b in best)
                 + " | | | the 200-epoch table |")
    return "\n".join(lines)


def title(strategy: str, config: dict[str, Any]) -> str:
    """The strategy's name, with the settings that change what it is (fixed architecture weights, selection)."""
    name = TITLES[strategy]
    if strategy in WEIGHTED and config.get("arch_lr", 1) == 0:
        name += ", architecture weights fixed"
    if config.get("select", "argmax") == "perturbation":
        name += " + perturbation selection"
    return name


def selection_table(runs: list[dict[str, Any]]) -> str:
    """Perturbation-selected cells beside the largest-weight (argmax) cells of the same supernets."""
    rs = [r for r in runs if "table_argmax" in r]
    if not rs:
        return ""
    lines = ["| strategy | seed | argmax cell | " + " | ".join(DATASET_TITLES[d] for d in DATASETS)
             + " | perturbation cell | " + " | ".join(DATASET_TITLES[d] for d in DATASETS) + " | selection (s) |",
             "|" + "---|" * (5 + 2 * len(DATASETS))]
    for r in rs:
        a, p = r["table_argmax"], r["table"]
        lines.append(f"| {r['strategy']} | {r['seed']} | `{r['extra']['argmax_cell']}` | "
                     + " | ".join(f"{a[d]:.2f}" for d in DATASETS) + f" | `{r['cell']}` | "
                     + " | ".join(f"{p[d]:.2f}" for d in DATASETS) + f" | {r['extra']['select_seconds']:.0f} |")
    lines.append("| mean | | | " + " | ".join(f"{np.mean([r['table_argmax'][d] for r in rs]):.2f}" for d in DATASETS)
                 + " | | " + " | ".join(f"{np.mean([r['table'][d] for r in rs]):.2f}" for d in DATASETS) + " | |")
    return "\n".join(lines)


def cells_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| strategy | seed | found cell | " + " | ".join(DATASET_TITLES[d] for d in DATASETS) + " | wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        t = r["table"]
        lines.append(f"| {r['strategy']} | {r['seed']} | `{r['cell']}` | "
                     + " | ".join(f"{t[d]:.2f}" for d in DATASETS) + f" | {r['wall_seconds']:.0f} |")
    return "\n".join(lines)


def fidelity_table(fid: dict[str, Any] | None) -> str:
    if not fid:
        return ""
    rows = fid["runs"]
    lines = ["| SPOS seed | cells | " + " | ".join(f"Kendall τ {DATASET_TITLES[d]}" for d in DATASETS)
             + " | Spearman ρ CIFAR-10 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['cells']} | " + " | ".join(f"{r[f'tau_{d}']:.3f}" for d in DATASETS)
                     + f" | {r['rho_cifar10']:.3f} |")
    lines.append("| mean ± std | | " + " | ".join(_pm([r[f"tau_{d}"] for r in rows], 3) for d in DATASETS)
                 + f" | {_pm([r['rho_cifar10'] for r in rows], 3)} |")
    return "\n".join(lines)


def weights_table(runs: list[dict[str, Any]]) -> str:
    """DARTS's, GDAS's and DrNAS's final op weights (softmax; DrNAS: Dirichlet mean), mean over edges and seeds,
    and how far they moved (DrNAS also: the sum of its concentration per edge)."""
    from llmnas.space.nb201 import OPS

    rows = []
    for s in WEIGHTED:
        ws = [np.asarray(r["extra"]["final_weights"]) for r in runs if r["strategy"] == s]
        if not ws:
            continue
        w = np.stack(ws)  # (seeds, 6, 5)
        spread = float(np.mean(w.max(-1) - w.min(-1)))
        betas = [np.asarray(r["extra"]["final_concentration"]) for r in runs
                 if r["strategy"] == s and "final_concentration" in r["extra"]]
        rows.append((f"| {TITLES[s]} | " + " | ".join(f"{v:.3f}" for v in w.mean((0, 1))) + f" | {spread:.3f} |",
                     f" {float(np.mean([b.sum(-1) for b in betas])):.3f} |" if betas else " |"))
    if not rows:
        return ""
    dirichlet = any(tail != " |" for _, tail in rows)
    head = "| strategy | " + " | ".join(OPS) + " | largest − smallest weight on an edge (mean) |"
    if dirichlet:
        head += " DrNAS concentration: sum of β on an edge (mean; 5 at the start) |"
    lines = [row + (tail if dirichlet else "") for row, tail in rows]
    return "\n".join([head, "|" + "---|" * (len(OPS) + 2 + dirichlet), *lines])


def write_outputs(runs: list[dict[str, Any]], table: NB201Table, strategies: Sequence[str], cfg: OneShotConfig,
                  out: Path, extra: dict[str, Any]) -> tuple[str, dict[str, Path]]:
    """Write ``results.md``, ``runs.json`` (with the summary) and ``search.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    fid = fidelity(runs, table)
    selection, weights = selection_table(runs), weights_table(runs)
    c = cfg.to_dict()
    md = "\n\n".join(p for p in [
        "# NAS-Bench-201 one-shot search on CIFAR-10 (found cells looked up in the 200-epoch table)",
        f"Protocol: C = {c['C']}, N = {c['N']}, epochs {c['epochs']}, {c['train_images'] or 25000} training / "
        f"{c['valid_images'] or 25000} validation images of NAS-Bench-201's halves, batch {c['batch_size']}, "
        f"{c['threads']} thread(s). "
        + (f"DrNAS: Adam lr {c['arch_lr']} on alpha, regulariser {c['drnas_reg']} × {c['drnas_reg_scale']} on the "
           "concentration. " if "drnas" in strategies else "")
        + ", ".join(f"{k}: {v}" for k, v in extra.items()),
        summary_table(runs, table, strategies),
        "## Found cells",
        cells_table(runs),
        *(["## Perturbation selection (DARTS-PT) against the largest weight, on the same supernets",
           "The argmax cell is the op of largest architecture weight per edge at the end of the search; the "
           f"perturbation cell fixes the edges one at a time by the op whose removal lowers the mixture's accuracy "
           f"on {c['pt_images'] or c['valid_images'] or 25000} validation images most, with {c['pt_tune_epochs']} "
           "epoch(s) of training between decisions (the selection column: its time).",
           selection] if selection else []),
        *(["## Architecture weights at the end of the search (softmax, DrNAS: Dirichlet mean; mean over edges and "
           "seeds; uniform = 0.200)",
            weights] if weights else []),
        *(["## Inherited-weight ranking fidelity (SPOS supernet, BN recalibrated per cell)",
           f"{c['fidelity_cells']} random cells fixed by seed {c['fidelity_seed']}, scored on {c['eval_images']} "
           f"validation images after recalibrating BatchNorm on {c['bn_batches']} training batches, against "
           "their 200-epoch table accuracy.", fidelity_table(fid)] if fid else []),
    ]) + "\n"
    paths = {"md": out / "results.md", "json": out / "runs.json", "png": out / "search.png"}
    paths["md"].write_text(md)
    # runs of other strategies or seeds already in the file stay there (a --resume of a subset loses nothing)
    key = {(r["strategy"], r["seed"], json.dumps(r["config"], sort_keys=True)) for r in runs}
    old = json.loads(paths["json"].read_text())["runs"] if paths["json"].exists() else []
    kept = [r for r in old if (r["strategy"], r["seed"], json.dumps(r["config"], sort_keys=True)) not in key]
    _write_json(paths["json"], runs + kept,
                {"config": c, "strategies": list(strategies), "fidelity": fid, "machine": extra})
    plot(runs, strategies, paths["png"])
    return md, paths


def plot(runs: list[dict[str, Any]], strategies: Sequence[str], path: Path) -> None:
    """Architecture weights over the search (DARTS, GDAS: mean over edges, per op) and accuracy over the search
    (ENAS: controller reward; SPOS: evolution's candidates and best so far), first seed of each strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmnas.space.nb201 import OPS

    shown = [s for s in strategies if any(r["strategy"] == s for r in runs)]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.5 * max(1, len(shown)), 3.6), squeeze=False)
    for ax, s in zip(axes[0], shown, strict=False):
        run = next(r for r in runs if r["strategy"] == s)
        hist = run["history"]
        if s in WEIGHTED:
            epochs = [h["epoch"] for h in hist]
            w = np.asarray([h["weights"] for h in hist])  # (T, 6, 5)
            for k, op in enumerate(OPS):
                ax.plot(epochs, w[:, :, k].mean(1), label=op)
            ax.set_xlabel("epoch")
            ax.set_ylabel("op weight (" + ("Dirichlet mean" if s == "drnas" else "softmax") + ", mean over edges)")
            ax.legend(fontsize=7)
        elif s == "enas":
            rewards = np.asarray(run["extra"].get("rewards", []), dtype=float)
            if len(rewards):
                k = min(25, len(rewards))
                ax.plot(rewards, ".", ms=2, alpha=0.3, label="sampled cell, one batch")
                ax.plot(np.arange(k - 1, len(rewards)), np.convolve(rewards, np.ones(k) / k, "valid"),
                        label=f"moving mean ({k})")
            ax.set_xlabel("controller update")
            ax.set_ylabel("validation-batch accuracy (%)")
            ax.legend(fontsize=7)
        else:
            accs = np.asarray([t["acc"] for t in run["extra"].get("search", [])], dtype=float)
            ax.plot(accs, ".", ms=3, alpha=0.5, label="candidate (inherited weights)")
            if len(accs):
                ax.plot(np.maximum.accumulate(accs), label="best so far")
            ax.set_xlabel("evolution trial")
            ax.set_ylabel("validation accuracy (%)")
            ax.legend(fontsize=7)
        ax.set_title(f"{TITLES[s]}, seed {run['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
