"""How long to train the supernet: its training budget and sampling rule against its ranking fidelity.

The 600-step from-scratch truth ranks architectures by what they reach in 600 steps. A supernet trained
for 6,000 steps has trained its shared weights ten times longer than any of those runs, and ranks
architectures by what they reach with far more training (a learned position table, for one, has caught
up). This script trains one supernet per variant (steps x sampling rule; the lr schedule decays over the
variant's own steps) and scores the fidelity architectures with inherited weights:

1. on the tuning set (``--arch-seed 777``, truth in ``results/tuning``), where the variant is chosen by a
   rule fixed before any variant was trained: the highest Kendall tau; on a tie at three decimals, the
   cheaper variant (fewer subnet-steps);
2. on the main set (the reported 30 architectures, truth in ``results``), every variant, the chosen one
   marked.

    python eval/supernet/budget.py                      # every variant (about 35 minutes on one idle core)
    python eval/supernet/budget.py --variants uniform600

Each variant's files: ``results/budget/<variant>/{tuning,main}/`` (``supernet.md``, ``fidelity.png``, the
stage JSONs); its supernet: ``runs/supernet_shakespeare/budget_<variant>``. Summary: ``results/budget/budget.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "results" / "budget"

#: name: (steps, largest, smallest, random subnets per step, seed of the architectures and batches[, split[, balance]])
VARIANTS = {
    "uniform300": (300, False, False, 4, 0),
    "uniform600": (600, False, False, 4, 0),
    "uniform1500": (1500, False, False, 4, 0),
    "uniform3000": (3000, False, False, 4, 0),
    "sandwich600": (600, True, True, 2, 0),
    "sandwich1500": (1500, True, True, 2, 0),
    # second round (after the first round's main-set figures were seen; chosen on the tuning set alone):
    "uniform600x8": (600, False, False, 8, 0),
    "uniform600s1": (600, False, False, 4, 1),
    "uniform600s2": (600, False, False, 4, 2),
    # third round (after the second round's main-set figures were seen; chosen on the tuning set alone): few-shot
    # supernets (supernet.split), one 600-step x 8-subnet supernet per value of the positional scheme or the width
    "split_pos": (600, False, False, 8, 0, "pos"),
    "split_d_model": (600, False, False, 8, 0, "d_model"),
    # fourth round (after split_pos's main-set figure was seen; chosen on the tuning set alone): widths drawn
    # uniformly (supernet.balance: d_model; under the cap only 5 % of uniform draws are d_model 192)
    "balanced_d_model": (600, False, False, 8, 0, None, "d_model"),
    "split_pos_balanced": (600, False, False, 8, 0, "pos", "d_model"),
    # seventh round (results/round7/RULE.md: chosen on the tuning and old main sets pooled, after 5 fine-tuning
    # steps; the winner alone on a fresh set): depths balanced too, or 12 subnets per step
    "split_pos_balanced_depth": (600, False, False, 8, 0, "pos", "[d_model,n_layers]"),
    "split_pos_balanced_x12": (600, False, False, 12, 0, "pos", "d_model"),
    # tenth round (results/round10/RULE.md: calibrated, chosen by leave-one-set-out over the five labelled sets;
    # the winner alone on a fourth fresh set): one supernet per depth, 6 subnets per step (within the 20x budget)
    "split_n_layers_balanced": (600, False, False, 6, 0, "n_layers", "d_model"),
    # eleventh round (results/round11/RULE.md: inherited loss alone, chosen on the six labelled sets; the winner
    # alone on a fifth fresh set): the recipe's supernet with per-value weights (supernet.unshare)
    "split_pos_balanced_unshare_ha": (600, False, False, 8, 0, "pos", "d_model"),
    "split_pos_balanced_unshare_haa": (600, False, False, 8, 0, "pos", "d_model"),
}
#: variants of later rounds, each compared with the incumbent by its own round's rule (not by this table's)
LATER_ROUNDS = {"split_pos_balanced_depth": 7, "split_pos_balanced_x12": 7, "split_n_layers_balanced": 10,
                "split_pos_balanced_unshare_ha": 11, "split_pos_balanced_unshare_haa": 11}
#: variant: its supernet.unshare (the per-layer decisions whose values get weights of their own)
UNSHARE = {"split_pos_balanced_unshare_ha": "[n_heads,activation]",
           "split_pos_balanced_unshare_haa": "[n_heads,attention,activation]"}
#: the mean inherited-weight loss of several supernets (same budget, other seeds): second round
ENSEMBLES = {"uniform600 x3 seeds": ("uniform600", "uniform600s1", "uniform600s2")}
#: the two 6,000-step supernets of the first tables (trained by run.py's supernet stage and its ablation)
EARLIER = {"sandwich6000": (HERE / "results" / "tuning", HERE / "results" / "sandwich6000"),
           "uniform6000": (HERE / "results" / "tuning" / "uniform", HERE / "results" / "uniform")}


def spec(name: str) -> tuple[int, bool, bool, int, int, str | None]:
    steps, largest, smallest, k, seed, *split = VARIANTS[name]
    return steps, largest, smallest, k, seed, (split[0] if split else None)


def balance(name: str) -> str | None:
    rest = VARIANTS[name][6:]
    return rest[0] if rest else None


def parts(name: str) -> int:
    """Supernets the variant trains: one, or one per value of its split decision (read from its committed
    training record, whose losses are keyed ``<value>/<role>``; else from its trained manifest)."""
    if not spec(name)[5]:
        return 1
    record = OUT / name / "tuning" / "supernet-supernet.json"
    if record.exists():
        losses = json.loads(record.read_text())["supernet"]["losses"]
        return len({key.split("/")[0] for key in losses})
    manifest = REPO / "runs" / "supernet_shakespeare" / f"budget_{name}" / "split.json"
    return len(json.loads(manifest.read_text())["values"]) if manifest.exists() else 1


def subnet_steps(name: str) -> int:
    """The variant's training: steps x subnets per step x supernets (one per value of a split)."""
    steps, largest, smallest, k, _, _ = spec(name)
    return steps * (int(largest) + int(smallest) + k) * parts(name)


def overrides(name: str) -> list[str]:
    steps, largest, smallest, k, seed, split = spec(name)
    sets = {"supernet.out": f"runs/supernet_shakespeare/budget_{name}", "supernet.train.max_steps": steps,
            "supernet.train.lr_decay_steps": steps, "supernet.largest": str(largest).lower(),
            "supernet.smallest": str(smallest).lower(), "supernet.random_subnets": k}
    if seed:
        sets |= {"supernet.seed": seed, "supernet.train.seed": 1337 + seed}
    if split:
        sets |= {"supernet.split": split}
    if balance(name):
        sets |= {"supernet.balance": balance(name)}
    if name in UNSHARE:
        sets |= {"supernet.unshare": UNSHARE[name]}
    return [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]


def run_variant(name: str, threads: int) -> None:
    from eval.supernet import run

    tuning, main = OUT / name / "tuning", OUT / name / "main"
    if not (tuning / "supernet-fidelity.json").exists():
        stages = "fidelity" if (tuning / "supernet-supernet.json").exists() else "supernet,fidelity"
        run.main(["--stages", stages, "--threads", str(threads), "--arch-seed", "777", "--out", str(tuning),
                  "--truth", str(HERE / "results" / "tuning"), *overrides(name)])
    if not (main / "supernet-fidelity.json").exists():
        run.main(["--stages", "fidelity", "--threads", str(threads), "--arch-seed", "12345", "--out", str(main),
                  "--truth", str(HERE / "results"), *overrides(name)])


def fidelity(folder: Path) -> dict | None:
    path = folder / "supernet-fidelity.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["fidelity"]["table"]["supernet (whole holdout)"]


def ensemble_fidelity(names: tuple[str, ...], split: str) -> dict | None:
    """Kendall tau / Spearman rho of the mean inherited-weight loss over the supernets ``names``."""
    from eval.supernet.run import rank_stats

    paths = [OUT / n / split / "supernet-fidelity.json" for n in names]
    if not all(p.exists() for p in paths):
        return None
    tables = [{r["arch_id"]: r for r in json.loads(p.read_text())["fidelity"]["rows"]} for p in paths]
    ids = sorted(tables[0])
    truth = [tables[0][i]["val_loss"] for i in ids]
    return rank_stats(truth, [sum(t[i]["supernet"] for t in tables) / len(tables) for i in ids])


def cell(v: dict | None) -> str:
    """``tau / rho`` of a table, or a dash where it was not run."""
    return "–" if v is None else f"{v['kendall_tau']:.3f} / {v['spearman_rho']:.3f}"


def summary() -> str:
    rows = []
    for name in VARIANTS:
        steps, largest, smallest, k, _, split = spec(name)
        n = int(largest) + int(smallest) + k
        rule = (("sandwich" if largest else "uniform") + (f", split on {split}" if split else "")
                + (f", {balance(name)} balanced" if balance(name) else "")
                + (f", {UNSHARE[name]} unshared" if name in UNSHARE else ""))
        rows.append((name, steps, n, rule, fidelity(OUT / name / "tuning"), fidelity(OUT / name / "main"),
                     parts(name)))
    for name, (tuning, main) in EARLIER.items():
        rows.append((name, 6000, 4, name.removesuffix("6000"), fidelity(tuning), fidelity(main), 1))
    for name, members in ENSEMBLES.items():
        steps, _, _, k, _, _ = spec(members[0])
        rows.append((name, steps, k, "uniform, mean of supernets",
                     ensemble_fidelity(members, "tuning"), ensemble_fidelity(members, "main"), len(members)))
    scored = [r for r in rows if r[4] is not None and r[0] not in LATER_ROUNDS]
    chosen = max(scored, key=lambda r: (round(r[4]["kendall_tau"], 3), -r[1] * r[2] * r[6]))[0] if scored else None
    lines = ["# Supernet training budget vs ranking fidelity (tiny_char, tiny-shakespeare)", "",
             "Kendall tau / Spearman rho of the inherited-weight holdout loss against the 600-step from-scratch "
             "holdout loss. The variant is chosen on the tuning set (highest tau; a tie at three decimals goes to "
             "fewer subnet-steps); the main set is the reported one.", "",
             "| variant | sampling | steps | subnets per step | subnet-steps | tuning set tau / rho | "
             "main set tau / rho |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, steps, n, rule, tuning, main, copies in sorted(rows, key=lambda r: (r[3], r[1])):
        mark = " **(chosen)**" if name == chosen else ""
        each = f"{steps:,}" + (f" (x{copies} supernets)" if copies > 1 else "")  # an ensemble's, or a split's
        lines.append(f"| {name}{mark} | {rule} | {each} | {n} | {steps * n * copies:,} | {cell(tuning)} | "
                     f"{cell(main)} |")
    lines += ["", "split_pos_balanced_depth and split_pos_balanced_x12 were the seventh round's candidates, compared "
              "with the incumbent by that round's own rule (after 5 fine-tuning steps, on both sets pooled): "
              "`results/round7/round7.md`. split_n_layers_balanced was the tenth round's (`results/round10/`), the "
              "two unshare variants the eleventh round's (`results/round11/`); none is marked chosen here.", "",
              "Machine: the 2-core x86_64 container, CPU only, one torch thread per run.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rewrite budget.md from the results there")
    args = p.parse_args()
    names = args.variants.split(",")
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {name!r} (allowed: {', '.join(VARIANTS)})")
    if not args.report:
        for name in names:
            run_variant(name, args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    text = summary()
    (OUT / "budget.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
