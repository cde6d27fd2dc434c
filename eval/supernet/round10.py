"""The tenth round (``results/round10/RULE.md``, written before its supernet was trained): a depth-split supernet
(one per depth) against the recipe's (one per positional scheme), both calibrated by the ninth round's procedure
(CDP), chosen by leave-one-set-out Kendall tau over the five labelled sets (150 architectures); the winner's
calibration, refitted on all 150, measured once on a fourth fresh set.

    python eval/supernet/budget.py --variants split_n_layers_balanced   # R1's supernet, tuning and main sets
    python eval/supernet/run.py --stages scratch --threads 1 --arch-seed 2030 --out eval/supernet/results/fresh2030
    python eval/supernet/round10.py --score       # R1 on the three earlier fresh sets; the table and the winner
    python eval/supernet/round10.py --fresh       # the winner on the fourth fresh set, once

Results: ``results/round10/round10.md``, ``round10.json`` and ``calibration.json``; R1's scores of the earlier
fresh sets and each candidate's fourth-fresh-set scores in ``results/round10/<candidate>/<set>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "results" / "round10"
RESULTS = HERE / "results"
#: the labelled sets: name -> (architecture seed, folder of its from-scratch truth)
SETS = {"tuning": ("777", RESULTS / "tuning"), "main": ("12345", RESULTS), "fresh2027": ("2027", RESULTS / "fresh"),
        "fresh2028": ("2028", RESULTS / "fresh2028"), "fresh2029": ("2029", RESULTS / "fresh2029")}
FRESH = ("fresh2030", "2030", RESULTS / "fresh2030")
#: candidate -> budget.py variant
CANDIDATES = {"R0": "split_pos_balanced", "R1": "split_n_layers_balanced"}
#: the ninth round's winning procedure: a per-layer term and an offset per positional scheme
OFFSETS, PER_LAYER = ("pos",), True


def scores_folder(key: str, name: str) -> Path:
    """Where a candidate's inherited-weight scores of a set are: R0's from the eighth and ninth rounds (the
    recipe's supernet), R1's tuning and main sets from budget.py, the rest under ``results/round10``."""
    from eval.supernet import budget

    if key == "R0" and name in ("tuning", "main", "fresh2027", "fresh2028"):
        return RESULTS / "round8" / name
    if key == "R0" and name == "fresh2029":
        return RESULTS / "round9" / name
    if name in ("tuning", "main"):
        return budget.OUT / CANDIDATES[key] / name
    return OUT / key / name


def score(key: str, name: str, seed: str, truth: Path, threads: int) -> None:
    """The candidate's inherited-weight fidelity on one set, unless its scores are there."""
    score_variant(CANDIDATES[key], scores_folder(key, name), seed, truth, threads)


def score_variant(variant: str, folder: Path, seed: str, truth: Path, threads: int) -> None:
    """The fidelity stage of a budget.py variant's supernet on one set into ``folder``, unless it is there."""
    from eval.supernet import budget, run

    if not (folder / "supernet-fidelity.json").exists():
        run.main(["--stages", "fidelity", "--threads", str(threads), "--arch-seed", seed, "--truth", str(truth),
                  "--out", str(folder), *budget.overrides(variant)])


def fit(train: list[dict]):
    from llmnas.supernet.calibration import fit as fit_calibration

    return fit_calibration([r["arch"] for r in train], [r["inherited"] for r in train], [r["truth"] for r in train],
                           offsets=OFFSETS, per_layer=PER_LAYER)


def loso(key: str) -> dict | None:
    """The candidate's held-out Kendall tau / Spearman rho on each labelled set (None until all are scored)."""
    from eval.supernet.round7 import stats
    from eval.supernet.round9 import rows, scores

    folders = {s: scores_folder(key, s) for s in SETS}
    if not all((f / "supernet-fidelity.json").exists() for f in folders.values()):
        return None
    sets = {s: rows(f) for s, f in folders.items()}
    per_set = {}
    for held in sets:
        calibration = fit([r for s in sets if s != held for r in sets[s]])
        per_set[held] = {"calibrated": stats(scores(calibration, sets[held]), "scored"),
                         "inherited": stats(sets[held], "inherited")}
    mean = sum(v["calibrated"]["kendall_tau"] for v in per_set.values()) / len(per_set)
    return {"variant": CANDIDATES[key], "sets": per_set, "mean_tau": mean, "cost": cost(key)}


def cost(key: str) -> float:
    """Training steps per searched architecture (of 1,000): the supernet's subnet-steps shared among them."""
    from eval.supernet import budget

    return budget.subnet_steps(CANDIDATES[key]) / 1000


def winner(results: dict) -> str | None:
    """The rule: the higher mean held-out tau; a tie at three decimals goes to the cheaper, then the earlier."""
    if any(e is None for e in results.values()):
        return None
    order = list(results)
    return max(order, key=lambda k: (round(results[k]["mean_tau"], 3), -results[k]["cost"], -order.index(k)))


def final(key: str):
    """The candidate's calibration fitted on all 150 labelled architectures."""
    from eval.supernet.round9 import rows

    return fit([r for s in SETS for r in rows(scores_folder(key, s))])


def run_fresh(key: str, threads: int) -> dict:
    from eval.supernet.round7 import stats
    from eval.supernet.round9 import rows, scores

    name, seed, truth = FRESH
    score(key, name, seed, truth, threads)
    calibration = final(key)
    test = rows(scores_folder(key, name))
    return {"candidate": key, "n": len(test), "chosen": stats(scores(calibration, test), "scored"),
            "inherited": stats(test, "inherited"), "params": stats(test, "params"),
            "grad_norm": stats(test, "grad_norm"), "calibration": calibration.to_dict()}


def report(results: dict, chosen: str | None, fresh: dict | None) -> str:
    from eval.supernet.budget import cell

    lines = ["# The tenth round: a depth-split supernet against the recipe's, both calibrated", "",
             "Kendall tau / Spearman rho against the 600-step from-scratch holdout loss. Each set is scored by the "
             "candidate's calibration (CDP) fitted on the other four; the choice is the higher mean tau (RULE.md).",
             "", "| candidate | supernet variant | steps per searched architecture | "
             + " | ".join(f"{s} (held out)" for s in SETS) + " | **mean tau** |",
             "|---|---|---:|" + "---:|" * (len(SETS) + 1)]
    for key, e in results.items():
        if e is None:
            lines.append(f"| {key} | {CANDIDATES[key]} | {cost(key):.1f} | " + " | ".join("–" for _ in SETS) + " | – |")
            continue
        mark = " **(chosen)**" if key == chosen else ""
        lines.append(f"| {key}{mark} | {e['variant']} | {e['cost']:.1f} ({600 / e['cost']:.1f}x less) | "
                     + " | ".join(cell(e["sets"][s]["calibrated"]) for s in SETS) + f" | **{e['mean_tau']:.3f}** |")
    lines += ["", "For the record, each candidate's inherited loss alone (no calibration) on each set:", "",
              "| candidate | " + " | ".join(SETS) + " |", "|---|" + "---:|" * len(SETS)]
    for key, e in results.items():
        if e is not None:
            lines.append(f"| {key} | " + " | ".join(cell(e["sets"][s]["inherited"]) for s in SETS) + " |")
    if fresh is not None:
        from eval.supernet.round7 import fresh_table

        lines += fresh_table(
            fresh, "fourth", FRESH[1], f"{fresh['candidate']}, calibrated", "its inherited loss alone (for the record)",
            before=(f"Its calibration, fitted on all 150 labelled architectures: `{json.dumps(fresh['calibration'])}`",
                    ""))
    lines += ["", "Machine: a 2-core x86_64 container, CPU only, one torch thread per run.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--score", action="store_true", help="score every candidate on every labelled set first")
    p.add_argument("--fresh", action="store_true", help="the winner on the fourth fresh set (once)")
    args = p.parse_args()
    if args.score:
        for key in CANDIDATES:
            for name, (seed, truth) in SETS.items():
                score(key, name, seed, truth, args.threads)
    from eval.supernet.round7 import fresh_look, write_record

    results = {key: loso(key) for key in CANDIDATES}
    chosen = winner(results)
    record = OUT / "round10.json"
    fresh = fresh_look(record, chosen, args.fresh, lambda key: run_fresh(key, args.threads),
                       "not every candidate is scored on every labelled set yet (run --score first)")
    if fresh is not None:
        (OUT / "calibration.json").write_text(json.dumps(fresh["calibration"], indent=1) + "\n")
    write_record(record, results, chosen, fresh, report(results, chosen, fresh))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
