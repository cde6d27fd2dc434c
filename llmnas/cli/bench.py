"""``llmnas bench nb201``: search strategies on NAS-Bench-201 at equal budgets.

Examples::

    llmnas bench nb201 --out runs/bench/nb201                       # 5 strategies x 100 seeds x 3 data sets
    llmnas bench nb201 --dataset cifar10 --budget 50 --seeds 20 --strategies random,thompson --out /tmp/nb
    llmnas bench nb201 --device pixel3 --strategies random,nsga2,evolution,thompson --out /tmp/nb   # 2 objectives
    llmnas bench nb201 --device pixel3 --latency-cap 20 --out /tmp/nb                             # latency cap
    llmnas bench nb201 --seed 1000 --score val --out /tmp/nb     # tuning: other seeds, validation signal only
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import yaml

from llmnas.errors import DataError, RecipeError

DEFAULT_DATA = Path(
    os.environ.get("LLMNAS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
) / "nasbench201"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmnas"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks of the search strategies")
    cmds = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    n = cmds.add_parser(
        "nb201",
        help="NAS-Bench-201: every strategy as an Optuna study, equal budgets, many seeds",
        description="Run search strategies on the NAS-Bench-201 tables: search on 12-epoch validation "
        "accuracy, report the 200-epoch test accuracy of the best-validation cell, expected over the tied "
        "best-validation cells a run found (or, with --device, the hypervolume of accuracy vs latency; with "
        "--latency-cap, the same under the cap; with --score val, the best validation accuracy). Writes a "
        "Markdown table, a JSON of every run and a PNG of best-so-far curves into --out.",
    )
    n.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"folder with the NAS-Bench-201 CSV tables (default: {DEFAULT_DATA})")
    n.add_argument("--official", type=Path,
                   help="read an official NAS-Bench-201 .pth / NATS-Bench tss file or fast-mode folder instead")
    n.add_argument("--trusted", action="store_true",
                   help="unpickle --official without restrictions (only for files you trust)")
    n.add_argument("--dataset", default="all",
                   help="cifar10, cifar100, imagenet16-120, a comma list, or all (default)")
    n.add_argument("--budget", type=int, default=100, help="architecture evaluations per run (default 100)")
    n.add_argument("--seeds", type=int, default=100, help="runs per strategy and data set (default 100)")
    n.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    n.add_argument("--strategies", default="random,tpe,evolution,reinforce,thompson",
                   help="comma list of samplers (random, tpe, nsga2, gp, evolution, reinforce, thompson), each "
                   "optionally as LABEL=SAMPLER to run one sampler with different --option settings")
    n.add_argument("--option", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                   help="a sampler option by strategy label, e.g. evolution.population_size=20 (repeatable)")
    n.add_argument("--device", help="latency column: two objectives (accuracy, latency), or the cap's device")
    n.add_argument("--latency-cap", type=float, metavar="MS", help="maximise accuracy with latency <= MS on --device")
    n.add_argument("--signal-decimals", type=int, default=4,
                   help="decimals the validation accuracy is rounded to, 0-6 (default 4: equal image counts tie)")
    n.add_argument("--score", default="test",
                   help="what a run reports (accuracy and cap modes): test (default; expected 200-epoch test "
                   "accuracy over the tied best-validation cells) or val (best validation accuracy: for tuning)")
    n.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    n.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"where parsed tables are cached (default: {DEFAULT_CACHE}); 'none' to disable")
    n.add_argument("--out", type=Path, required=True, help="output folder")
    n.add_argument("--progress", action="store_true", help="show a progress bar")
    n.set_defaults(func=nb201)
    from llmnas.vision.oneshot import cli as oneshot_cli

    oneshot_cli.register(cmds, DEFAULT_DATA)


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    from llmnas.space import yaml_io

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        strategy, dot, name = key.rpartition(".")  # labels may hold dots, option names do not
        if not sep or not dot or not strategy or not name:
            raise RecipeError(f"--option {item!r} must read STRATEGY.KEY=VALUE (e.g. evolution.population_size=20)")
        try:
            out.setdefault(strategy, {})[name] = yaml_io.load(value)  # 1e-3 is a number, as in recipes
        except yaml.YAMLError:
            raise RecipeError(f"--option {item!r}: {value!r} is not a valid value") from None
    return out


def parse_strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise RecipeError(f"--strategies {text!r}: names no strategy (a comma list of samplers, e.g. random,thompson)")
    return names


def parse_datasets(text: str) -> tuple[str, ...]:
    from llmnas.benchmarks.nb201 import DATASETS

    if text.strip() == "all":
        return DATASETS
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise DataError(f"--dataset {text!r}: names no data set (allowed: {', '.join(DATASETS)}, all)")
    for name in names:
        if name not in DATASETS:
            raise DataError(f"--dataset {name!r} is not a NAS-Bench-201 data set (allowed: {', '.join(DATASETS)}, all)")
    return names


def check_folder(flag: str, path: Path) -> None:
    """``path`` must be a folder or creatable as one: checked before any run, so that nothing is lost at the end."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise RecipeError(f"{flag} {path}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK):
                raise RecipeError(f"{flag} {path}: {folder} is not writable")
            return


def nb201(args: argparse.Namespace) -> int:
    from llmnas.benchmarks import BenchConfig, load_nb201, load_official, run_benchmark, write_outputs

    start = time.perf_counter()
    if args.trusted and args.official is None:
        raise RecipeError("--trusted applies to --official only (the CSV tables are never unpickled)")
    check_folder("--out", args.out)
    if args.official is not None:
        table = load_official(args.official, trusted=args.trusted)
    else:
        cache = None if str(args.cache_dir).lower() == "none" else args.cache_dir
        if cache is not None:
            check_folder("--cache-dir", cache)
        table = load_nb201(args.data, cache_dir=cache)
    config = BenchConfig(
        datasets=parse_datasets(args.dataset),
        strategies=parse_strategies(args.strategies),
        budget=args.budget,
        seeds=args.seeds,
        seed=args.seed,
        device=args.device,
        latency_cap=args.latency_cap,
        workers=args.workers,
        options=parse_options(args.option),
        signal_decimals=args.signal_decimals,
        score=args.score,
    )
    results = run_benchmark(table, config, progress=args.progress)
    seconds = time.perf_counter() - start
    extra = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
             "python": platform.python_version(), "workers": config.workers, "wall_seconds": round(seconds, 1)}
    md, paths = write_outputs(results, table, config, args.out, extra)
    print(md)
    print(f"{len(results)} runs in {seconds:.1f} s on {config.workers} worker(s); wrote "
          + ", ".join(str(p) for p in paths.values()))
    return 0
