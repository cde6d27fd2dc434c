"""The seventh round (``results/round7/RULE.md``, written before any run): candidates compared on 60 pooled
architectures, the winner alone measured once on a fresh set.

The main set had been looked at six times, once per round's winner. This round pools it with the tuning set
(60 architectures, one 600-step from-scratch truth) to choose among the candidates below, each scored with 5
fine-tuning steps at peak lr 1e-3 from its inherited weights; the winner alone is then measured on 30 fresh
architectures (``--arch-seed 2027``, truth in ``results/fresh``), and that Kendall tau is the reported one.

    python eval/supernet/run.py --stages scratch --threads 1 --arch-seed 2027 --out eval/supernet/results/fresh
    python eval/supernet/round7.py --candidates K1          # one candidate's supernet, fidelity and fine-tuning
    python eval/supernet/round7.py --candidates K2          # (candidates may run side by side, one per core)
    python eval/supernet/round7.py --report                 # the pooled table and the winner
    python eval/supernet/round7.py --fresh                  # the winner on the fresh set (once)

Results: ``results/round7/round7.md`` and ``round7.json``; each candidate's files in ``results/budget/<variant>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "results" / "round7"
FRESH_TRUTH = HERE / "results" / "fresh"
FRESH_SEED = "2027"
#: the sets pooled for the choice: name -> (architecture seed, folder of its from-scratch truth)
SETS = {"tuning": ("777", HERE / "results" / "tuning"), "main": ("12345", HERE / "results")}
#: candidate -> budget.py variant (K0 is the incumbent, measured in the fifth and sixth rounds)
CANDIDATES = {"K0": "split_pos_balanced", "K1": "split_pos_balanced_depth", "K2": "split_pos_balanced_x12"}
STEPS, LR = 5, 1e-3
SCORER = f"supernet + {STEPS} steps at lr {LR:g}"
SEARCHED = 1000  # architectures a search scores: the supernet's training is shared among them


def cost(name: str) -> float:
    """Training steps per searched architecture: the supernet's subnet-steps over 1,000, plus the fine-tuning."""
    from eval.supernet import budget

    return budget.subnet_steps(name) / SEARCHED + STEPS


def run_candidate(key: str, threads: int) -> None:
    """The candidate's supernet and inherited-weight fidelity on both sets (budget.py), then its fine-tuning."""
    from eval.supernet import budget, run

    name = CANDIDATES[key]
    budget.run_variant(name, threads)
    for set_name, (seed, truth) in SETS.items():
        folder = budget.OUT / name / set_name
        if SCORER in finetune_rows(folder):
            continue
        run.main(["--stages", "finetune", "--threads", str(threads), "--arch-seed", seed, "--truth", str(truth),
                  "--out", str(folder), "--finetune-steps", str(STEPS), "--finetune-lr", f"{LR:g}",
                  *budget.overrides(name)])


def finetune_rows(folder: Path) -> dict:
    path = folder / "supernet-finetune.json"
    return json.loads(path.read_text())["finetune"]["runs"] if path.exists() else {}


def scored(folder: Path) -> list[dict] | None:
    """One row per architecture of the set: truth, inherited-weight loss, loss after the fine-tuning."""
    fid = folder / "supernet-fidelity.json"
    tuned = finetune_rows(folder).get(SCORER, {})
    if not fid.exists():
        return None
    rows = json.loads(fid.read_text())["fidelity"]["rows"]
    if any(r["arch_id"] not in tuned for r in rows):
        return None
    # the proxies signed so that a lower value predicts a lower loss, as the scorers are
    return [{"arch_id": r["arch_id"], "truth": r["val_loss"], "inherited": r["supernet"],
             "finetuned": tuned[r["arch_id"]]["val_loss"], "params": -r["params"], "grad_norm": -r["grad_norm"],
             "pos": r["arch"]["pos"]} for r in rows]


def stats(rows: list[dict], key: str) -> dict:
    from eval.supernet.run import rank_stats

    return rank_stats([r["truth"] for r in rows], [r[key] for r in rows])


def table() -> dict:
    from eval.supernet import budget

    out = {}
    for key, name in CANDIDATES.items():
        sets = {s: scored(budget.OUT / name / s) for s in SETS}
        entry = {"variant": name, "cost": cost(name), "sets": {}}
        for s, rows in sets.items():
            if rows is not None:
                entry["sets"][s] = {"inherited": stats(rows, "inherited"), "finetuned": stats(rows, "finetuned")}
        if all(rows is not None for rows in sets.values()):
            pooled = [r for rows in sets.values() for r in rows]
            entry["pooled"] = {"n": len(pooled), "inherited": stats(pooled, "inherited"),
                               "finetuned": stats(pooled, "finetuned")}
        out[key] = entry
    return out


def winner(results: dict) -> str | None:
    """The rule: highest pooled tau after fine-tuning; a tie at three decimals goes to the cheaper candidate,
    then to the earlier one (K0 before K1). None until every candidate is measured."""
    if not all("pooled" in e for e in results.values()):
        return None
    order = list(results)
    return max(order, key=lambda k: (round(results[k]["pooled"]["finetuned"]["kendall_tau"], 3),
                                     -results[k]["cost"], -order.index(k)))


def run_fresh(key: str, threads: int) -> dict:
    """The winner's inherited-weight fidelity and fine-tuning on the fresh set (its supernet retrained first
    if this checkout lacks it)."""
    from eval.supernet import budget, run

    name = CANDIDATES[key]
    folder = OUT / "fresh"
    trained = (REPO / "runs" / "supernet_shakespeare" / f"budget_{name}" / "split.json").exists()
    stages = "fidelity,finetune" if trained else "supernet,fidelity,finetune"
    run.main(["--stages", stages, "--threads", str(threads), "--arch-seed", FRESH_SEED,
              "--truth", str(FRESH_TRUTH), "--out", str(folder), "--finetune-steps", str(STEPS),
              "--finetune-lr", f"{LR:g}", *budget.overrides(name)])
    rows = scored(folder)
    assert rows is not None, f"{folder}: the fresh set was not scored"
    return {"candidate": key, "variant": name, "n": len(rows), "inherited": stats(rows, "inherited"),
            "finetuned": stats(rows, "finetuned")}


def every_set(key: str) -> dict:
    """For the record, after the fresh look: the winner and two proxies on each set and on all of them pooled
    (not used for any choice)."""
    from eval.supernet import budget

    folders = {s: budget.OUT / CANDIDATES[key] / s for s in SETS} | {"fresh": OUT / "fresh"}
    sets = {s: scored(f) for s, f in folders.items()}
    sets["all"] = [r for rows in sets.values() for r in rows]
    for pos in sorted({r["pos"] for r in sets["all"]}):  # within one part of the split supernet
        sets[f"all, {pos} only"] = [r for r in sets["all"] if r["pos"] == pos]
    return {s: {"n": len(rows), **{k: stats(rows, k) for k in ("inherited", "finetuned", "params", "grad_norm")}}
            for s, rows in sets.items()}


def report(results: dict, chosen: str | None, fresh: dict | None) -> str:
    from eval.supernet.budget import cell

    lines = ["# The seventh round: candidates on 60 pooled architectures, the winner on a fresh set", "",
             "Kendall tau / Spearman rho against the 600-step from-scratch holdout loss. The choice: the highest "
             f"pooled tau after {STEPS} fine-tuning steps at lr {LR:g} (RULE.md).", "",
             "| candidate | supernet variant | steps per searched architecture | tuning set tau (inherited / +5) | "
             "old main set tau (inherited / +5) | pooled 60, inherited: tau / rho | "
             "**pooled 60, +5 steps: tau / rho** |",
             "|---|---|---:|---|---|---:|---:|"]
    for key, e in results.items():
        sets = [e["sets"].get(s) for s in SETS]
        both = [("–" if v is None else f"{v['inherited']['kendall_tau']:.3f} / {v['finetuned']['kendall_tau']:.3f}")
                for v in sets]
        pooled = e.get("pooled")
        mark = " **(chosen)**" if key == chosen else ""
        lines.append(f"| {key}{mark} | {e['variant']} | {e['cost']:.1f} ({600 / e['cost']:.1f}x less) | {both[0]} | "
                     f"{both[1]} | {cell(pooled and pooled['inherited'])} | {cell(pooled and pooled['finetuned'])} |")
    if fresh is not None:
        lines += ["", f"## The winner ({fresh['candidate']}) on the fresh set ({fresh['n']} architectures, "
                  f"`--arch-seed {FRESH_SEED}`), measured once", "",
                  "| scorer | Kendall tau / Spearman rho |", "|---|---:|",
                  f"| **inherited weights + {STEPS} steps (the reported figure; target tau >= 0.8)** | "
                  f"**{cell(fresh['finetuned'])}** |",
                  f"| inherited weights alone | {cell(fresh['inherited'])} |"]
        every = fresh.get("every_set") or {}
        if every:
            lines += ["", "For the record (no choice made on it): Kendall tau / Spearman rho of the winner and two "
                      "zero-cost proxies on each set, and on all of them pooled.", "",
                      "| set | n | inherited weights | + 5 steps | parameter count | grad_norm |",
                      "|---|---:|---:|---:|---:|---:|"]
            for s, e in every.items():
                lines.append(f"| {s} | {e['n']} | {cell(e['inherited'])} | {cell(e['finetuned'])} | "
                             f"{cell(e['params'])} | {cell(e['grad_norm'])} |")
    lines += ["", "Machine: a 2-core x86_64 container, CPU only, one torch thread per run.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", default="", help=f"comma-separated, of {', '.join(CANDIDATES)} (K0 is measured)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="the pooled table and the winner from the files there")
    p.add_argument("--fresh", action="store_true", help="the winner on the fresh set (once)")
    args = p.parse_args()
    for key in filter(None, args.candidates.split(",")):
        if key not in CANDIDATES:
            raise SystemExit(f"--candidates: unknown candidate {key!r} (allowed: {', '.join(CANDIDATES)})")
        run_candidate(key, args.threads)
    results = table()
    chosen = winner(results)
    record = OUT / "round7.json"
    fresh = fresh_look(record, chosen, args.fresh, lambda key: run_fresh(key, args.threads),
                       "not every candidate is measured on both sets yet (run --candidates first)")
    if fresh is not None:
        fresh["every_set"] = every_set(fresh["candidate"])
    write_record(record, results, chosen, fresh, report(results, chosen, fresh))
    return 0


def fresh_look(record: Path, chosen: str | None, look: bool, measure, not_ready: str) -> dict | None:
    """The fresh-set result stored in ``record``; with ``look``, the winner ``chosen`` measured there by
    ``measure(chosen)``. The rule allows one look: a look with another winner than the stored one is refused."""
    fresh = json.loads(record.read_text()).get("fresh") if record.exists() else None
    if look:
        if chosen is None:
            raise SystemExit(f"--fresh: {not_ready}")
        if fresh is not None and fresh["candidate"] != chosen:
            raise SystemExit(f"--fresh: the fresh set was already measured with {fresh['candidate']}; "
                             "the rule allows one look")
        fresh = measure(chosen)
    return fresh


def fresh_table(fresh: dict, ordinal: str, seed: str, chosen: str, inherited: str, before: tuple = (),
                extra: tuple = ()) -> list[str]:
    """The report lines of a round's one look at its fresh set: the winner's figure (labelled ``chosen``), the
    inherited weights alone (``inherited``), any ``extra`` rows, and the two proxies."""
    from eval.supernet.budget import cell

    return ["", f"## The winner ({fresh['candidate']}) on the {ordinal} fresh set ({fresh['n']} architectures, "
            f"`--arch-seed {seed}`), measured once", "", *before,
            "| scorer | Kendall tau / Spearman rho |", "|---|---:|",
            f"| **{chosen} (the reported figure; target tau >= 0.8)** | **{cell(fresh['chosen'])}** |",
            f"| {inherited} | {cell(fresh['inherited'])} |", *extra,
            f"| parameter count | {cell(fresh['params'])} |", f"| grad_norm | {cell(fresh['grad_norm'])} |"]


def write_record(record: Path, results: dict, chosen: str | None, fresh: dict | None, text: str) -> None:
    """``<round>.json`` (the candidates, the choice, the fresh look) and its table ``<round>.md``."""
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"candidates": results, "chosen": chosen, "fresh": fresh}, indent=1) + "\n")
    record.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
