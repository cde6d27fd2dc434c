"""``llmnas bench nb201-oneshot``: DARTS, GDAS, ENAS, SPOS, DrNAS and DARTS- on a NAS-Bench-201 cell supernet trained on
CIFAR-10.

Examples::

    llmnas bench nb201-oneshot --strategies darts,gdas,enas,spos --seeds 3 --out runs/oneshot   # CPU protocol
    llmnas bench nb201-oneshot --protocol gpu --seeds 3 --out runs/oneshot_gpu   # NAS-Bench-201's C=16, N=5, 50 epochs
    llmnas bench nb201-oneshot --strategies gdas --seeds 1 --seed 100 --set arch_lr=1e-3 --out /tmp/tune   # tuning
    llmnas bench nb201-oneshot --strategies drnas --seeds 3 --out runs/drnas   # DrNAS alone
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import yaml

from llmnas.errors import RecipeError
from llmnas.vision.oneshot.config import STRATEGIES

DEFAULT_IMAGES = Path(
    os.environ.get("LLMNAS_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data")
) / "images" / "cifar10_jpg.tar.gz"
PROTOCOLS = ("cpu", "gpu")


def register(cmds: argparse._SubParsersAction, table_default: Path) -> None:
    o = cmds.add_parser(
        "nb201-oneshot",
        help="NAS-Bench-201 one-shot search on real CIFAR-10 (DARTS, GDAS, ENAS, SPOS, DrNAS, DARTS-), cells looked up",
        description="Train a weight-shared NAS-Bench-201 cell supernet on CIFAR-10's training half with each "
        "strategy, look the found cell up in the 200-epoch table (CIFAR-10, CIFAR-100, ImageNet16-120) and write "
        "a Markdown table (mean ± std over seeds, beside the published rows), a JSON of every run and a PNG into "
        "--out. SPOS runs also report the supernet's ranking fidelity (Kendall tau over fixed random cells).",
    )
    o.add_argument("--strategies", default=",".join(STRATEGIES),
                   help=f"comma list of {', '.join(STRATEGIES)} (default: all)")
    o.add_argument("--seeds", type=int, default=3, help="runs per strategy (default 3)")
    o.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    o.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                   help=f"CIFAR-10 tarball or ImageFolder directory (default: {DEFAULT_IMAGES})")
    o.add_argument("--data", type=Path, default=table_default,
                   help=f"folder with the NAS-Bench-201 CSV tables (default: {table_default})")
    o.add_argument("--protocol", default="cpu",
                   help="cpu (default: the reduced protocol) or gpu (NAS-Bench-201's C=16, N=5, 50 epochs, cuda)")
    o.add_argument("--config", type=Path, help="YAML mapping of search settings applied over --protocol")
    o.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one search setting, e.g. arch_lr=1e-3 or 'epochs={gdas: 4}' (repeatable, applied last)")
    o.add_argument("--workers", type=int, default=1, help="searches run at once, one process each (default 1)")
    o.add_argument("--cache-dir", type=Path, help="where decoded images are cached (default: the images' default)")
    o.add_argument("--resume", action="store_true", help="keep the finished runs of --out with the same settings")
    o.add_argument("--report", action="store_true",
                   help="rewrite table, JSON and PNG from the finished runs in --out (same settings)")
    o.add_argument("--out", type=Path, required=True, help="output folder")
    o.set_defaults(func=oneshot)


def build_config(protocol: str, config: Path | None, sets: list[str]) -> Any:
    from llmnas.space import yaml_io
    from llmnas.vision.oneshot.config import GPU_PROTOCOL, OneShotConfig

    if protocol not in PROTOCOLS:
        raise RecipeError(f"--protocol {protocol!r} is not a protocol (allowed: {', '.join(PROTOCOLS)})")
    settings: dict[str, Any] = dict(GPU_PROTOCOL) if protocol == "gpu" else {}
    if config is not None:
        if not config.is_file():
            raise RecipeError(f"--config {config}: no such file")
        try:
            loaded = yaml_io.load(config.read_text())
        except yaml.YAMLError as e:
            raise RecipeError(f"--config {config}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise RecipeError(f"--config {config}: must be a mapping of search settings")
        settings.update(loaded)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r} must read KEY=VALUE (e.g. arch_lr=1e-3)")
        try:
            settings[key.strip()] = yaml_io.load(value)
        except yaml.YAMLError:
            raise RecipeError(f"--set {item!r}: {value!r} is not a valid value") from None
    return OneShotConfig.from_dict(settings, source=str(config) if config else "--set")


def oneshot(args: argparse.Namespace) -> int:
    from llmnas.benchmarks import load_nb201
    from llmnas.cli.bench import DEFAULT_CACHE, check_folder
    from llmnas.vision.oneshot.bench import parse_strategies, run_bench, write_outputs

    start = time.perf_counter()
    strategies = parse_strategies(args.strategies)
    if args.seeds < 1:
        raise RecipeError(f"--seeds {args.seeds}: need at least 1 run per strategy")
    if args.seed < 0:
        raise RecipeError(f"--seed {args.seed}: seeds are 0 or more")
    if args.workers < 1:
        raise RecipeError(f"--workers {args.workers}: need at least 1")
    cfg = build_config(args.protocol, args.config, args.set)
    cfg.check_strategies(strategies)  # before the table and the images load
    check_folder("--out", args.out)
    if args.report and not (args.out / "runs.json").exists():
        raise RecipeError(f"--report: {args.out / 'runs.json'} does not exist (run the benchmark first)")
    table = load_nb201(args.data, cache_dir=DEFAULT_CACHE if os.access(DEFAULT_CACHE.parent, os.W_OK) else None)
    from llmnas.vision.data import load_images

    load_images(args.images, cache_dir=args.cache_dir)  # a bad source fails here, before any search
    seeds = list(range(args.seed, args.seed + args.seeds))
    runs = run_bench(args.images, table, strategies, seeds, cfg, args.out, workers=args.workers,
                     cache_dir=args.cache_dir, resume=args.resume, report_only=args.report)
    seconds = time.perf_counter() - start
    extra = {"machine": f"{platform.machine()} ({os.cpu_count()} cores)", "torch threads per search": cfg.threads,
             "workers": args.workers, "total wall time (s)": round(seconds, 1)}
    if args.report:  # the figures of the run that produced the searches, not of this rewrite
        import json

        extra = json.loads((args.out / "runs.json").read_text()).get("machine") or extra
    md, paths = write_outputs(runs, table, strategies, cfg, args.out, extra)
    print(md)
    print(f"{len(runs)} searches in {seconds:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
