"""NAS-Bench-201: the ablations that choose the samplers' settings, then the strategies at equal budgets.

Stages (each a ``llmnas bench nb201`` invocation; results under ``eval/nasbench201/results/``):

0. ``ablations`` -- tuning: the llmnas samplers' settings varied one at a time, on seeds 1000-1099 (never
   used by the stages below), scored by the best *validation* accuracy found (``--score val``: no test
   accuracy is looked at): ``ablations/nb201_val.*``. The settings are then chosen by :data:`RULE`, stated
   before the runs, and written to ``ablations/choice.md``; the samplers' defaults follow that choice.
1. ``accuracy`` -- random, TPE, regularized evolution, REINFORCE and Thompson sampling with their defaults,
   100 evaluations, seeds 0-99, CIFAR-10 / CIFAR-100 / ImageNet16-120: ``nb201.{md,json,png}``.
2. ``pareto`` -- validation accuracy vs latency on a Pixel 3 (two objectives), hypervolume ratio:
   ``nb201_pareto_pixel3.*``.
3. ``cap`` -- best accuracy with latency <= 10 ms on a Pixel 3: ``nb201_cap_pixel3_10.0ms.*``.

Stages 1 and 3 report the 200-epoch test accuracy expected over the tied best-validation cells a run found
(:mod:`llmnas.benchmarks.nb201_score`).

    python eval/nasbench201/run.py --stages ablations      # tuning (about 5-10 minutes on 2 CPU cores)
    python eval/nasbench201/run.py                         # stages 1-3 (about 3 minutes on 2 idle CPU cores)
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

from llmnas.cli import main as llmnas
from llmnas.samplers.factory import SAMPLERS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT = "random,tpe,evolution,reinforce,thompson"
TUNING_SEED = 1000  # the ablations' seeds: 1000-1099, disjoint from the reported 0-99
RULE = (
    "For each llmnas sampler, the variant (its defaults, or one setting changed) with the highest mean over the "
    "three data sets of its mean best validation accuracy (seeds 1000-1099, 100 evaluations) is chosen; means are "
    "compared at the two decimals the table prints, and a variant that does not beat the defaults there is a tie, "
    "which keeps the defaults (among tied variants, the first in the table wins)."
)
#: The samplers' defaults when the sweep was run, before its choice (n_startup_trials 10 -> 20, see
#: ``results/ablations/choice.md``): pinned so that rerunning the sweep reproduces its results.
SWEEP_CENTRE = {"thompson": {"n_startup_trials": 10}}
ABLATIONS = {
    # label=sampler: options changed from the sweep's centre
    "evolution": {},
    "evo-P10-S3=evolution": {"population_size": 10, "sample_size": 3},
    "evo-P20-S5=evolution": {"population_size": 20, "sample_size": 5},
    "evo-P50-S25=evolution": {"population_size": 50, "sample_size": 25},
    "evo-repeats=evolution": {"avoid_repeats": False},
    "reinforce": {},
    "rl-lr0.1=reinforce": {"learning_rate": 0.1},
    "rl-no-entropy=reinforce": {"entropy_weight": 0.0},
    "rl-raw-advantage=reinforce": {"normalize_advantage": False},
    "rl-repeats=reinforce": {"avoid_repeats": False},
    "rl-lstm=reinforce": {"controller": "lstm"},
    "thompson": {},
    "ts-startup5=thompson": {"n_startup_trials": 5},
    "ts-startup20=thompson": {"n_startup_trials": 20},
    "ts-noise0.1=thompson": {"noise": 0.1},
    "ts-noise1=thompson": {"noise": 1.0},
    "ts-prior3=thompson": {"prior": 3.0},
}


def run(args: list[str]) -> None:
    print("$ llmnas " + " ".join(args), flush=True)
    code = llmnas(args)
    if code:
        sys.exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="accuracy,pareto,cap", help="comma list: ablations, accuracy, pareto, cap")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args, extra = parser.parse_known_args()  # anything else goes to llmnas bench nb201 (e.g. --data)
    common = ["bench", "nb201", "--budget", "100", "--seeds", str(args.seeds), *extra]
    stages = args.stages.split(",")
    start = time.perf_counter()
    if "ablations" in stages:
        options = [f"--option={label.split('=')[0]}.{k}={v}" for label, opts in ABLATIONS.items()
                   for k, v in {**SWEEP_CENTRE.get(label.split("=")[-1], {}), **opts}.items()]
        run(["bench", "nb201", "--budget", "100", "--seeds", str(args.seeds), "--seed", str(TUNING_SEED),
             "--score", "val", *extra, "--strategies", ",".join(ABLATIONS), *options,
             "--out", str(args.out / "ablations")])
        choice = choose(json.loads((args.out / "ablations" / "nb201_val.json").read_text()))
        (args.out / "ablations" / "choice.md").write_text(choice)
        print(choice)
    if "accuracy" in stages:
        run([*common, "--strategies", DEFAULT, "--out", str(args.out)])
    if "pareto" in stages:
        run([*common, "--strategies", "random,tpe,nsga2,evolution,reinforce,thompson", "--device", "pixel3",
             "--out", str(args.out)])
    if "cap" in stages:
        run([*common, "--strategies", DEFAULT, "--device", "pixel3", "--latency-cap", "10", "--out", str(args.out)])
    print(f"total {time.perf_counter() - start:.0f} s")


def choose(payload: dict) -> str:
    """Apply :data:`RULE` to the ablations' JSON; the choice per sampler, as Markdown."""
    summary = payload["summary"]
    datasets = payload["config"]["datasets"]
    lines = ["Choice of the sampler settings (`python eval/nasbench201/run.py --stages ablations`).", "",
             f"Rule, fixed before the runs: {RULE}", "",
             "| sampler | variant | mean best validation accuracy over the data sets | chosen |", "|---|---|---:|---|"]
    for sampler in ("evolution", "reinforce", "thompson"):
        variants = [label.split("=")[0] for label in ABLATIONS
                    if label == sampler or label.endswith(f"={sampler}")]
        score = {v: round(sum(summary[f"{v}/{d}"]["mean"] for d in datasets) / len(datasets), 2) for v in variants}
        best = max(variants, key=lambda v: (score[v], v == sampler, -variants.index(v)))
        if score[best] <= score[sampler]:
            best = sampler
        for v in variants:
            change = ", ".join(f"{k}={o}" for k, o in ABLATIONS[_label(v)].items()) or "the sweep's centre"
            lines.append(f"| {sampler} | {v} ({change}) | {score[v]:.2f} | {'**yes**' if v == best else ''} |")
    return "\n".join(lines) + "\n\n" + _centre() + "\n"


def _centre() -> str:
    """The sweep's centre in words: the tuned settings' values in the rows labelled with the sampler's name."""
    parts = []
    for sampler in ("evolution", "reinforce", "thompson"):
        tuned = {k for label, opts in ABLATIONS.items() if label.endswith(f"={sampler}") for k in opts}
        defaults = {p.name: p.default for p in inspect.signature(SAMPLERS[sampler][0]).parameters.values()}
        values = {**defaults, **SWEEP_CENTRE.get(sampler, {})}
        parts.append(f"{sampler} " + ", ".join(f"{k}={values[k]}" for k in sorted(tuned)))
    return "The sweep's centre (each sampler's row): " + "; ".join(parts) + "."


def _label(variant: str) -> str:
    return next(label for label in ABLATIONS if label.split("=")[0] == variant)


if __name__ == "__main__":
    main()
