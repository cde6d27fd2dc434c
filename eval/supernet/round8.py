"""The eighth round (``results/round8/RULE.md``, written before any run): smaller fine-tuning steps from the
recipe's supernet, chosen on 90 pooled architectures, the winner measured once on a second fresh set.

Every candidate is scored from one supernet (the recipe's, ``runs/supernet_shakespeare/supernet``) on the tuning
set, the old main set and the seventh round's fresh set; the highest Kendall tau over the 90 wins (a tie at three
decimals: the cheaper, then the earlier). The winner alone is then measured on 30 new architectures
(``--arch-seed 2028``, truth in ``results/fresh2028``).

    python eval/supernet/run.py --stages scratch --threads 1 --arch-seed 2028 --out eval/supernet/results/fresh2028
    python eval/supernet/round8.py --sets tuning,main       # and --sets fresh2027 on the other core
    python eval/supernet/round8.py --report                 # the pooled table and the winner
    python eval/supernet/round8.py --fresh                  # the winner on the second fresh set, once

Results: ``results/round8/round8.md`` and ``round8.json``; each set's stage files in ``results/round8/<set>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "results" / "round8"
RESULTS = HERE / "results"
#: the sets pooled for the choice: name -> (architecture seed, folder of its from-scratch truth)
SETS = {"tuning": ("777", RESULTS / "tuning"), "main": ("12345", RESULTS), "fresh2027": ("2027", RESULTS / "fresh")}
FRESH = ("fresh2028", "2028", RESULTS / "fresh2028")
#: candidate -> (fine-tuning steps, peak lr); 0 steps: inherited weights alone
CANDIDATES = {"F0": (0, None), "F1": (5, 1e-3), "F2": (10, 3e-4), "F3": (15, 3e-4), "F4": (15, 1e-4)}
SUPERNET_VARIANT = "split_pos_balanced"  # the recipe's supernet, as budget.py names it
SUPERNET = "runs/supernet_shakespeare/supernet"


def scorer(key: str) -> str:
    """The name of the candidate's scores in the stage files."""
    steps, lr = CANDIDATES[key]
    return "supernet" if not steps else f"supernet + {steps} steps at lr {lr:g}"


def cost(key: str) -> float:
    """Training steps per searched architecture: the supernet's share plus the fine-tuning."""
    from eval.supernet import budget

    return budget.subnet_steps(SUPERNET_VARIANT) / 1000 + CANDIDATES[key][0]


def score_set(name: str, seed: str, truth: Path, keys: list[str], threads: int) -> None:
    """Inherited-weight fidelity (and the proxies), then each candidate's fine-tuning, on one set."""
    from eval.supernet import run

    folder = OUT / name
    common = ["--threads", str(threads), "--arch-seed", seed, "--truth", str(truth), "--out", str(folder),
              "--set", f"supernet.out={SUPERNET}"]
    if not (folder / "supernet-fidelity.json").exists():
        run.main(["--stages", "fidelity", *common])
    for key in keys:
        steps, lr = CANDIDATES[key]
        if steps and scorer(key) not in finetune_runs(folder):
            run.main(["--stages", "finetune", *common, "--finetune-steps", str(steps), "--finetune-lr", f"{lr:g}"])


def finetune_runs(folder: Path) -> dict:
    path = folder / "supernet-finetune.json"
    return json.loads(path.read_text())["finetune"]["runs"] if path.exists() else {}


def scored(folder: Path, keys: list[str]) -> list[dict] | None:
    """One row per architecture: the truth and each candidate's loss (None until all are there)."""
    fid = folder / "supernet-fidelity.json"
    if not fid.exists():
        return None
    runs = finetune_runs(folder)
    out = []
    for r in json.loads(fid.read_text())["fidelity"]["rows"]:
        row = {"arch_id": r["arch_id"], "truth": r["val_loss"], "params": -r["params"], "grad_norm": -r["grad_norm"]}
        for key in keys:
            name = scorer(key)
            if name == "supernet":
                row[key] = r["supernet"]
            elif r["arch_id"] in runs.get(name, {}):
                row[key] = runs[name][r["arch_id"]]["val_loss"]
            else:
                return None
        out.append(row)
    return out


def table() -> dict:
    from eval.supernet.round7 import stats

    keys = list(CANDIDATES)
    sets = {s: scored(OUT / s, keys) for s in SETS}
    out: dict = {"sets": {}, "pooled": None}
    for s, rows in sets.items():
        if rows is not None:
            out["sets"][s] = {k: stats(rows, k) for k in [*keys, "params", "grad_norm"]}
    if all(rows is not None for rows in sets.values()):
        pooled = [r for rows in sets.values() for r in rows]
        out["pooled"] = {"n": len(pooled), **{k: stats(pooled, k) for k in [*keys, "params", "grad_norm"]}}
    return out


def winner(results: dict) -> str | None:
    """The rule: the highest pooled Kendall tau; a tie at three decimals goes to the cheaper candidate, then to
    the earlier. None until every set is scored by every candidate."""
    pooled = results.get("pooled")
    if pooled is None:
        return None
    order = list(CANDIDATES)
    return max(order, key=lambda k: (round(pooled[k]["kendall_tau"], 3), -cost(k), -order.index(k)))


def run_fresh(key: str, threads: int) -> dict:
    from eval.supernet.round7 import stats

    name, seed, truth = FRESH
    score_set(name, seed, truth, [key], threads)
    rows = scored(OUT / name, [key, "F0"])
    assert rows is not None, f"{OUT / name}: the fresh set was not scored"
    return {"candidate": key, "n": len(rows), "chosen": stats(rows, key), "inherited": stats(rows, "F0"),
            "params": stats(rows, "params"), "grad_norm": stats(rows, "grad_norm")}


def report(results: dict, chosen: str | None, fresh: dict | None) -> str:
    from eval.supernet.budget import cell

    lines = ["# The eighth round: fine-tuning steps on 90 pooled architectures, the winner on a second fresh set", "",
             "Kendall tau / Spearman rho against the 600-step from-scratch holdout loss, every score from the "
             f"recipe's supernet (`{SUPERNET}`). The choice: the highest pooled tau (RULE.md).", "",
             "| candidate | steps per searched architecture | " + " | ".join(SETS) + " | **pooled** |",
             "|---|---:|" + "---:|" * (len(SETS) + 1)]
    pooled = results.get("pooled") or {}
    for key, (steps, lr) in CANDIDATES.items():
        what = "inherited weights" if not steps else f"+ {steps} steps at lr {lr:g}"
        mark = " **(chosen)**" if key == chosen else ""
        sets = [cell(results["sets"].get(s, {}).get(key)) for s in SETS]
        lines.append(f"| {key}{mark}: {what} | {cost(key):.1f} ({600 / cost(key):.1f}x less) | "
                     + " | ".join(sets) + f" | {cell(pooled.get(key))} |")
    for proxy in ("params", "grad_norm"):
        sets = [cell(results["sets"].get(s, {}).get(proxy)) for s in SETS]
        lines.append(f"| {proxy} (zero-cost proxy) | 0 | " + " | ".join(sets) + f" | {cell(pooled.get(proxy))} |")
    if fresh is not None:
        from eval.supernet.round7 import fresh_table

        lines += fresh_table(fresh, "second", FRESH[1], fresh["candidate"], "inherited weights alone (for the record)")
    lines += ["", "Machine: a 2-core x86_64 container, CPU only, one torch thread per run.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", default="", help=f"comma-separated, of {', '.join(SETS)}: score every candidate there")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="the pooled table and the winner from the files there")
    p.add_argument("--fresh", action="store_true", help="the winner on the second fresh set (once)")
    args = p.parse_args()
    for name in filter(None, args.sets.split(",")):
        if name not in SETS:
            raise SystemExit(f"--sets: unknown set {name!r} (allowed: {', '.join(SETS)})")
        score_set(name, *SETS[name], list(CANDIDATES), args.threads)
    from eval.supernet.round7 import fresh_look, write_record

    results = table()
    chosen = winner(results)
    record = OUT / "round8.json"
    fresh = fresh_look(record, chosen, args.fresh, lambda key: run_fresh(key, args.threads),
                       "not every set is scored by every candidate yet (run --sets first)")
    write_record(record, results, chosen, fresh, report(results, chosen, fresh))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
