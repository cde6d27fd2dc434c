"""NAS-Bench-201: the search strategies at equal budgets, and the ablations behind the chosen settings.

Stages (each a ``llmnas bench nb201`` invocation; results under ``eval/nasbench201/results/``):

1. ``accuracy`` -- random, TPE, regularized evolution, REINFORCE and Thompson sampling, 100 evaluations,
   100 seeds, CIFAR-10 / CIFAR-100 / ImageNet16-120: ``nb201.{md,json,png}``.
2. ``pareto`` -- validation accuracy vs latency on a Pixel 3 (two objectives), hypervolume ratio:
   ``nb201_pareto_pixel3.*``.
3. ``cap`` -- best accuracy with latency <= 10 ms on a Pixel 3: ``nb201_cap_pixel3_10.0ms.*``.
4. ``ablations`` -- the samplers' settings varied one at a time: ``ablations/nb201.*``.

    python eval/nasbench201/run.py                         # stages 1-3 (about 3 minutes on 2 idle CPU cores)
    python eval/nasbench201/run.py --stages ablations      # about 5-10 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmnas.cli import main as llmnas

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT = "random,tpe,evolution,reinforce,thompson"
ABLATIONS = {
    # label=sampler: options
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
    parser.add_argument("--stages", default="accuracy,pareto,cap", help="comma list: accuracy, pareto, cap, ablations")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args, extra = parser.parse_known_args()  # anything else goes to llmnas bench nb201 (e.g. --data)
    common = ["bench", "nb201", "--budget", "100", "--seeds", str(args.seeds), *extra]
    stages = args.stages.split(",")
    start = time.perf_counter()
    if "accuracy" in stages:
        run([*common, "--strategies", DEFAULT, "--out", str(args.out)])
    if "pareto" in stages:
        run([*common, "--strategies", "random,tpe,nsga2,evolution,reinforce,thompson", "--device", "pixel3",
             "--out", str(args.out)])
    if "cap" in stages:
        run([*common, "--strategies", DEFAULT, "--device", "pixel3", "--latency-cap", "10", "--out", str(args.out)])
    if "ablations" in stages:
        options = [f"--option={label.split('=')[0]}.{k}={v}" for label, opts in ABLATIONS.items()
                   for k, v in opts.items()]
        run([*common, "--strategies", ",".join(ABLATIONS), *options, "--out", str(args.out / "ablations")])
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
