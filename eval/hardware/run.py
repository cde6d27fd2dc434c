"""Hardware-aware search on this CPU: how well the latency predictor predicts, against what noise, and a search.

Stages (each writes its own file under ``eval/hardware/results/``; a rerun skips a stage whose file exists):

1. ``profile``: ``llmnas hw profile`` of ``tiny`` and ``moe`` (200 architectures each, sampled with seed 1; the
   features were tuned on seed 0's sample, which the table does not use): the look-up table, 100 architectures
   to fit, 100 held out; the held-out error for prefill latency, decode throughput, peak memory and training
   step, with the table alone, FLOPs alone and parameters alone beside it. ``<space>/report.json``. Every chunk
   of 16 architectures is measured in a fresh process (``Settings.isolate``; ``--no-isolate``: in this one, as
   the first tables were).
2. ``noise``: the measurement noise floor. The 100 held-out architectures measured again, in a second pass
   (another order), and compared with the first pass exactly as the predictor is (share within ±10 %,
   Spearman ρ): a predictor cannot agree with a measurement better than two measurements agree. And one
   architecture (the median-size held-out one) measured 10 times: the spread of its medians.
   ``<space>/noise.json``.
3. ``drift`` (``moe`` only): why measurements are taken in fresh processes. The median-size held-out
   architecture's prompt timed 200 times in this process, then again after 32 other architectures were measured
   in it (``isolate: false``) with their training steps, and after 32 more without training steps (each pass a
   fresh model, median of the 200 calls). ``moe/drift.json``.
4. ``search``: validation loss against decode tokens/s on the stdlib corpus (the quickstart recipe's data and
   budget), NSGA-II, decode throughput predicted by the ``tiny`` predictor of stage 1; the Pareto front
   plotted (``search/pareto.png``, ``.html``) and every front point measured again. ``search/search.json``.

    taskset -c 1 python eval/hardware/run.py                       # everything (about an hour on 2 shared cores)
    taskset -c 1 python eval/hardware/run.py --stages profile,noise --spaces tiny

Every table is printed as Markdown and written to ``results/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmnas.hardware import Settings, describe_device, measure_many, profile_space
from llmnas.hardware.predictor import error_stats
from llmnas.space import load_space
from llmnas.space.arch import Architecture

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SETTINGS = Settings(batch_size=1, prompt_len=64, new_tokens=32, train_batch_size=4, train_seq_len=128, repeats=15,
                    train_repeats=3, warmup=2, threads=1)
N = 200
SEED = 1  # --seed


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def held_out(folder: Path) -> tuple[list[Architecture], list[dict]]:
    rows = [json.loads(line) for line in (folder / "measurements.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "holdout"]
    return [Architecture.from_dict(r["arch"]) for r in rows], rows


def median_size(archs: list[Architecture]) -> Architecture:
    """The held-out architecture of median parameter count (the one measured repeatedly)."""
    sizes = [a.param_counts().total for a in archs]
    return archs[int(np.argsort(sizes)[len(sizes) // 2])]


def stage_profile(space_name: str, out: Path) -> None:
    folder = out / space_name
    if (folder / "report.json").exists():
        log(f"profile {space_name}: done before ({folder / 'report.json'})")
        return
    log(f"profile {space_name}: {N} architectures, seed {SEED}")
    profile_space(load_space(space_name), N, folder, settings=SETTINGS, seed=SEED, log=log)
    log((folder / "report.md").read_text())


def stage_refit(space_name: str, out: Path) -> None:
    """Fit the predictor again from the stored measurements (the features were changed after the measurements
    were taken; they were chosen by leave-one-out on the fit half, never on the held-out half)."""
    from llmnas.hardware.profile import refit

    folder = out / space_name
    if (folder / "measurements.jsonl").exists():
        refit(folder)
        log(f"refit {space_name}:\n" + (folder / "report.md").read_text())


def stage_noise(space_name: str, out: Path) -> None:
    folder = out / space_name
    path = folder / "noise.json"
    if path.exists():
        log(f"noise {space_name}: done before ({path})")
        return
    archs, rows = held_out(folder)
    log(f"noise {space_name}: the {len(archs)} held-out architectures measured again")
    second = measure_many(archs, "cpu", SETTINGS, seed=SEED + 1000)
    result: dict = {"space": space_name, "settings": SETTINGS.to_dict(), "retest": {},
                    "second_pass": [{"arch_id": a.id, **m.values()} for a, m in zip(archs, second, strict=True)]}
    for key in ("prefill_ms", "decode_tokens_per_s", "train_step_ms", "peak_memory_mb"):
        first = np.array([r[key]["median"] if isinstance(r[key], dict) else r[key] for r in rows])
        again = np.array([m.values()[key] for m in second])
        result["retest"][key] = error_stats(again, first)
    pick = median_size(archs)
    log(f"noise {space_name}: {pick.id} ({pick.short()}) measured 10 times")
    runs = [measure_many([pick], "cpu", SETTINGS, seed=SEED + 2000 + k)[0] for k in range(10)]
    one = {}
    for key in ("prefill_ms", "decode_tokens_per_s", "train_step_ms"):
        medians = [m.values()[key] for m in runs]
        mid = statistics.median(medians)
        one[key] = {"medians": medians, "max_rel_dev": max(abs(v / mid - 1) for v in medians),
                    "cv": statistics.stdev(medians) / statistics.mean(medians),
                    "repeat_spread_median": statistics.median(getattr(m, key).spread for m in runs)}
    result["one_arch"] = {"arch_id": pick.id, "arch": pick.short(), **one}
    path.write_text(json.dumps(result, indent=2) + "\n")


def stage_drift(space_name: str, out: Path) -> None:
    """Time one architecture's prompt in a fresh process, then after other architectures were measured in it.

    Run as its own process (``--stages drift``): the first pass must be the process's first measurement."""
    from llmnas.hardware.measure import Workloads

    folder = out / space_name
    path = folder / "drift.json"
    if path.exists():
        log(f"drift {space_name}: done before ({path})")
        return
    archs, _ = held_out(folder)
    pick = median_size(archs)
    others = [a for a in archs if a.id != pick.id]

    def prompt_ms(calls: int = 200) -> float:
        w = Workloads(pick, torch.device("cpu"), SETTINGS, seed=5)
        times = []
        with torch.no_grad():
            for _ in range(calls):
                c0 = time.thread_time()
                w.prefill()
                times.append(1e3 * (time.thread_time() - c0))
        return statistics.median(times)

    here = dataclasses.replace(SETTINGS, isolate=False)
    result = {"space": space_name, "arch_id": pick.id, "arch": pick.short(), "calls": 200, "passes": {}}
    result["passes"]["fresh process"] = [prompt_ms(), prompt_ms()]
    measure_many(others[32:64], "cpu", dataclasses.replace(here, train_repeats=0), seed=7)
    result["passes"]["after 32 others measured without training steps"] = [prompt_ms(), prompt_ms()]
    measure_many(others[:32], "cpu", here, seed=7)
    result["passes"]["after 32 more measured with training steps"] = [prompt_ms(), prompt_ms()]
    for name, v in result["passes"].items():
        log(f"drift {space_name}: {name}: {v[0]:.3f} / {v[1]:.3f} ms")
    path.write_text(json.dumps(result, indent=2) + "\n")


def stage_search(out: Path, n_trials: int) -> None:
    from eval.hardware.search import run_search_stage

    run_search_stage(out / "search", (out / "tiny" / "predictor.json").resolve(), n_trials, log)


def markdown(out: Path) -> str:
    lines = ["# Hardware-aware search results", "",
             f"Machine: {describe_device('cpu', 1)['cpu_model']}, {describe_device('cpu')['cpu_count']} cores "
             f"(shared with other jobs), torch {torch.__version__}, Python {platform.python_version()}; "
             "measured with `taskset -c 1` and one torch thread"
             + (", each chunk of architectures in a fresh process" if SETTINGS.isolate else "")
             + f"; sample seed {SEED}.",
             ""]
    lines += ["## Predictor error on held-out architectures", "",
              "| space | target | n | within ±10 % | within ±20 % | Spearman ρ | mean abs. rel. err. | "
              "retest: within ±10 % / ρ | table alone: ±10 % / ρ | ρ FLOPs alone | ρ params alone |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for space_name in ("tiny", "moe"):
        rep = out / space_name / "report.json"
        if not rep.exists():
            continue
        report = json.loads(rep.read_text())
        noise_path = out / space_name / "noise.json"
        noise = json.loads(noise_path.read_text()) if noise_path.exists() else None
        for target, e in report["holdout"].items():
            p = e["predictor"]
            r = noise["retest"].get(target) if noise else None
            lut = e.get("lut_only")
            lines.append(
                f"| {space_name} | {target} | {p['n']} | {p['within_10pct']:.0%} | {p['within_20pct']:.0%} | "
                f"{p['spearman']:.3f} | {p['mape']:.1%} | "
                + (f"{r['within_10pct']:.0%} / {r['spearman']:.3f}" if r else "–") + " | "
                + (f"{lut['within_10pct']:.0%} / {lut['spearman']:.3f}" if lut else "–")
                + f" | {e['spearman_flops_alone']:.3f} | {e['spearman_params_alone']:.3f} |"
            )
    lines += ["", "## Noise floor: one architecture measured 10 times", "",
              "| space | architecture | figure | spread of repeats (IQR/median) | CV of the 10 medians | "
              "largest deviation from their median |", "|---|---|---|---|---|---|"]
    for space_name in ("tiny", "moe"):
        noise_path = out / space_name / "noise.json"
        if not noise_path.exists():
            continue
        one = json.loads(noise_path.read_text())["one_arch"]
        for key in ("prefill_ms", "decode_tokens_per_s", "train_step_ms"):
            v = one[key]
            lines.append(f"| {space_name} | `{one['arch']}` | {key} | {v['repeat_spread_median']:.1%} | "
                         f"{v['cv']:.1%} | {v['max_rel_dev']:.1%} |")
    drift = out / "moe" / "drift.json"
    if drift.exists():
        d = json.loads(drift.read_text())
        lines += ["", f"## One process's history: `{d['arch']}`, prompt median of {d['calls']} calls (two models)", "",
                  "| measured | prompt ms |", "|---|---|"]
        lines += [f"| {k} | {v[0]:.3f} / {v[1]:.3f} |" for k, v in d["passes"].items()]
    search = out / "search" / "search.json"
    if search.exists():
        from eval.hardware.search import search_markdown

        lines += ["", search_markdown(json.loads(search.read_text()))]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="profile,noise,search")
    parser.add_argument("--spaces", default="tiny,moe")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--search-trials", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1, help="sample of the profile stage (1: the first tables; 2: a "
                        "fresh sample for the fresh-process measurements)")
    parser.add_argument("--no-isolate", action="store_true", help="measure in this process (the first tables)")
    args = parser.parse_args()
    global SEED, SETTINGS
    SEED = args.seed
    SETTINGS = dataclasses.replace(SETTINGS, isolate=not args.no_isolate)
    torch.set_num_threads(1)
    stages = args.stages.split(",")
    for space_name in args.spaces.split(","):
        if "profile" in stages:
            stage_profile(space_name, args.out)
        if "refit" in stages:
            stage_refit(space_name, args.out)
        if "noise" in stages:
            stage_noise(space_name, args.out)
        if "drift" in stages and space_name == "moe":
            stage_drift(space_name, args.out)
    if "search" in stages:
        stage_search(args.out, args.search_trials)
    text = markdown(args.out)
    (args.out / "README.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
