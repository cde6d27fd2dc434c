"""The eleventh round (``results/round11/RULE.md``, written before any candidate was trained): the recipe's
supernet against two with per-value weights (``supernet.unshare``: query and key projections per head count,
and per attention kind; FFN projections per activation), all scored by the inherited loss alone, chosen by mean
Kendall tau over the six labelled sets (180 architectures); the winner measured once on a fifth fresh set.

    python eval/supernet/budget.py --variants split_pos_balanced_unshare_ha    # U1's supernet, tuning and main
    python eval/supernet/budget.py --variants split_pos_balanced_unshare_haa   # U2's
    python eval/supernet/run.py --stages scratch --threads 1 --arch-seed 2031 --out eval/supernet/results/fresh2031
    python eval/supernet/round11.py --score       # U1 and U2 on the four fresh sets; the table and the winner
    python eval/supernet/round11.py --fresh       # the winner on the fifth fresh set, once

Results: ``results/round11/round11.md`` and ``round11.json``; the candidates' scores of the earlier fresh sets
and of the fifth in ``results/round11/<candidate>/<set>/``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "results" / "round11"
RESULTS = HERE / "results"
#: the labelled sets: name -> (architecture seed, folder of its from-scratch truth)
SETS = {"tuning": ("777", RESULTS / "tuning"), "main": ("12345", RESULTS), "fresh2027": ("2027", RESULTS / "fresh"),
        "fresh2028": ("2028", RESULTS / "fresh2028"), "fresh2029": ("2029", RESULTS / "fresh2029"),
        "fresh2030": ("2030", RESULTS / "fresh2030")}
FRESH = ("fresh2031", "2031", RESULTS / "fresh2031")
#: candidate -> budget.py variant (in the rule's tie order: fewer weights first)
CANDIDATES = {"U0": "split_pos_balanced", "U1": "split_pos_balanced_unshare_ha", "U2": "split_pos_balanced_unshare_haa"}


def scores_folder(key: str, name: str) -> Path:
    """Where a candidate's inherited-weight scores of a set are: U0's (the recipe's supernet) from the rounds that
    scored it, U1's and U2's tuning and main sets from budget.py, the rest under ``results/round11``."""
    from eval.supernet import budget, round10

    if key == "U0" and name in round10.SETS:
        return round10.scores_folder("R0", name)
    if key == "U0" and name == "fresh2030":
        return round10.OUT / "R0" / name
    if key != "U0" and name in ("tuning", "main"):
        return budget.OUT / CANDIDATES[key] / name
    return OUT / key / name


def score(key: str, name: str, seed: str, truth: Path, threads: int) -> None:
    """The candidate's inherited-weight fidelity on one set, unless its scores are there."""
    from eval.supernet.round10 import score_variant

    score_variant(CANDIDATES[key], scores_folder(key, name), seed, truth, threads)


def evaluate(key: str) -> dict | None:
    """The candidate's Kendall tau / Spearman rho on each labelled set and their mean tau (None until scored)."""
    from eval.supernet import budget
    from eval.supernet.round7 import stats
    from eval.supernet.round9 import rows

    folders = {s: scores_folder(key, s) for s in SETS}
    if not all((f / "supernet-fidelity.json").exists() for f in folders.values()):
        return None
    per_set = {s: stats(rows(f), "inherited") for s, f in folders.items()}
    mean = sum(v["kendall_tau"] for v in per_set.values()) / len(per_set)
    return {"variant": CANDIDATES[key], "sets": per_set, "mean_tau": mean, "weights": weights(key),
            "cost": budget.subnet_steps(CANDIDATES[key]) / 1000}


@functools.cache
def weights(key: str) -> int:
    """The candidate's supernet weights (one part of the split: every part has as many)."""
    from eval.supernet import budget
    from llmnas.space import load_space
    from llmnas.supernet import SuperNet, SupernetConfig

    unshare = budget.UNSHARE.get(CANDIDATES[key], "[]").strip("[]")
    config = SupernetConfig(unshare=tuple(d for d in unshare.split(",") if d))
    return SuperNet(load_space("tiny_char"), unshare=config.unshare).num_parameters()


def winner(results: dict) -> str | None:
    """The rule: the highest mean tau; a tie at three decimals goes to fewer weights (U0, then U1)."""
    if any(e is None for e in results.values()):
        return None
    order = list(results)
    return max(order, key=lambda k: (round(results[k]["mean_tau"], 3), -results[k]["weights"], -order.index(k)))


def run_fresh(key: str, threads: int) -> dict:
    from eval.supernet.round7 import stats
    from eval.supernet.round9 import rows

    name, seed, truth = FRESH
    score(key, name, seed, truth, threads)
    test = rows(scores_folder(key, name))
    if key != "U0":
        score("U0", name, seed, truth, threads)
    incumbent = rows(scores_folder("U0", name))
    assert [r["arch_id"] for r in incumbent] == [r["arch_id"] for r in test]
    return {"candidate": key, "n": len(test), "chosen": stats(test, "inherited"),
            "inherited": stats(incumbent, "inherited"), "params": stats(test, "params"),
            "grad_norm": stats(test, "grad_norm")}


#: the searches whose retrained winners --winners compares: U0's (the recipe before this round) and U1's
#: and U1's scored on the whole holdout (search.whole_split, after the round)
SEARCHES = {"U0": RESULTS / "supernet-retrain.json", "U1": RESULTS / "unshared" / "supernet-retrain.json",
            "U1, whole split": RESULTS / "unshared_whole" / "supernet-retrain.json"}


def from_short(space, short: str):
    """A dense architecture back from its ``Architecture.short()`` text (the retrain records written before
    they kept the architecture); the caller checks the id."""
    import re

    head, layers = short.split(": ", 1)
    d, pos, norm = re.fullmatch(r"d(\d+) (\w+)/(\w+)", head).groups()
    blocks = []
    for count, body in re.findall(r"(?:(\d+)x)?\[([^\]]+)\]", layers):
        blocks += [body] * int(count or 1)
    params = {"d_model": int(d), "n_layers": len(blocks), "pos": pos, "norm": norm, "tie_embeddings": True}
    for i, body in enumerate(blocks):
        m = re.fullmatch(r"h(\d+)/kv(\d+)(?: w(\d+))? (\w+):(\d+)", body)
        h, kv, window, activation, hidden = m.groups()
        params |= {f"L{i:02d}.n_heads": int(h), f"L{i:02d}.kv_ratio": int(h) // int(kv),
                   f"L{i:02d}.head_dim": "auto", f"L{i:02d}.attention": "sliding" if window else "full",
                   f"L{i:02d}.activation": activation, f"L{i:02d}.ffn": "dense",
                   f"L{i:02d}.ffn_mult": int(hidden) / int(d)}
        if window:
            params[f"L{i:02d}.window"] = int(window)
    return space.decode(params)


def winners(threads: int) -> dict:
    """A diagnostic after the round: each search's retrained winners, scored with inherited weights by U0's and
    U1's supernets (whole holdout, as the fidelity sets are) and trained 600 steps from scratch as the truth is
    (the recipe's schedule over 600 steps, the holdout as validation). Results: ``results/round11/winners.json``."""
    import json

    import torch
    from accelerate import Accelerator

    from eval.supernet import budget, run
    from llmnas.data import prepare_data
    from llmnas.recipe import load_recipe
    from llmnas.search.engine import prepare_space
    from llmnas.space.arch import Architecture
    from llmnas.supernet import evaluate_subnet, load_supernet
    from llmnas.train import train

    torch.set_num_threads(threads)
    path = OUT / "winners.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    recipe = load_recipe(run.RECIPE, [f"data.source={run.DATA}"])
    data = prepare_data(recipe.data)
    nets = {}
    for key in ("U0", "U1"):
        sets = dict(a.split("=", 1) for a in budget.overrides(CANDIDATES[key])[1::2])
        nets[key] = load_supernet(REPO / sets["supernet.out"]).net
    space = prepare_space(recipe, data)
    cfg = recipe.train.replace(max_steps=600, lr_decay_steps=None, eval_interval=None)
    acc = Accelerator(cpu=True)
    for search, record in SEARCHES.items():
        if not record.exists():
            continue
        rows = json.loads(record.read_text())["retrain"]
        for k, r in enumerate(rows):
            if r["arch_id"] in done:
                continue
            # results/supernet-retrain.json keeps the second round's recipe's winners before U0's three
            label = search if k >= len(rows) - 3 else "uniform600x8 (an earlier recipe)"
            arch = Architecture.from_dict(r["arch"]) if "arch" in r else from_short(space, r["short"])
            assert arch.id == r["arch_id"], (arch.short(), r["short"])
            row = {"search": label, "short": r["short"], "params": r["params"],
                   "retrained": [x["val_loss"] for x in r["runs"]]}
            for key, net in nets.items():
                row[f"inherited_{key}"] = evaluate_subnet(net, arch, data, recipe.train, acc, whole_split=True).val_loss
            row["scratch600"] = train(arch, data, cfg, acc)[1].val_loss
            done[r["arch_id"]] = row
            print(f"{search} {r['arch_id']} {r['short']}: {row}", flush=True)
            path.write_text(json.dumps(done, indent=1) + "\n")
    return done


def all_sets(chosen: str) -> dict[str, tuple[float, dict]]:
    """U0's and the winner's inherited loss over the six labelled sets and the fresh one: the mean per-set tau and
    the tau / rho pooled over all their architectures."""
    from eval.supernet.round7 import stats
    from eval.supernet.round9 import rows

    out = {}
    for key in dict.fromkeys(("U0", chosen)):
        sets = [rows(scores_folder(key, s)) for s in (*SETS, FRESH[0])]
        mean = sum(stats(r, "inherited")["kendall_tau"] for r in sets) / len(sets)
        out[key] = (mean, stats([r for rs in sets for r in rs], "inherited"))
    return out


def report(results: dict, chosen: str | None, fresh: dict | None) -> str:
    from eval.supernet.budget import UNSHARE, cell

    lines = ["# The eleventh round: per-value weights for head counts, attention kinds and activations", "",
             "Kendall tau / Spearman rho of the inherited-weight holdout loss (no calibration) against the 600-step "
             "from-scratch holdout loss; the choice is the highest mean tau over the six labelled sets (RULE.md).",
             "", "| candidate | supernet.unshare | weights per part | steps per searched architecture | "
             + " | ".join(SETS) + " | **mean tau** |", "|---|---|---:|---:|" + "---:|" * (len(SETS) + 1)]
    for key, e in results.items():
        unshare = UNSHARE.get(CANDIDATES[key], "–")
        if e is None:
            lines.append(f"| {key} | {unshare} | {weights(key):,} | – | " + " | ".join("–" for _ in SETS) + " | – |")
            continue
        mark = " **(chosen)**" if key == chosen else ""
        lines.append(f"| {key}{mark} | {unshare} | {e['weights']:,} | {e['cost']:.1f} ({600 / e['cost']:.1f}x less) | "
                     + " | ".join(cell(e["sets"][s]) for s in SETS) + f" | **{e['mean_tau']:.3f}** |")
    if (OUT / "winners.json").exists():
        import json
        import statistics

        lines += ["", "## After the round: each search's retrained winners (`round11.py --winners`, a diagnostic)", "",
                  "Each search's top 3 retrained for 2,000 steps (3 seeds, nanoGPT's validation split), scored with "
                  "inherited weights by both supernets, and trained 600 steps from scratch as the fidelity truth is "
                  "(one seed, the holdout). Lower is better everywhere.", "",
                  "| search | architecture | params | U0 inherited | U1 inherited | 600 steps from scratch | "
                  "2,000 steps (mean of 3) |", "|---|---|---:|---:|---:|---:|---:|"]
        for row in json.loads((OUT / "winners.json").read_text()).values():
            lines.append(f"| {row['search']} | {row['short']} | {row['params']:,} | {row['inherited_U0']:.4f} | "
                         f"{row['inherited_U1']:.4f} | {row['scratch600']:.4f} | "
                         f"{statistics.mean(row['retrained']):.4f} |")
    if fresh is not None:
        from eval.supernet.round7 import fresh_table

        lines += fresh_table(fresh, "fifth", FRESH[1], f"{fresh['candidate']}, inherited loss",
                             "U0, the recipe's supernet as it was (for the record)")
        lines += ["", "All seven sets (the six labelled and the fresh one), for the record: the mean per-set tau, "
                  "and Kendall tau / Spearman rho pooled over the 210 architectures.", "",
                  "| candidate | mean tau over 7 sets | pooled over 210 |", "|---|---:|---:|"]
        lines += [f"| {key} | {m:.3f} | {cell(pooled)} |" for key, (m, pooled) in all_sets(fresh["candidate"]).items()]
    lines += ["", "Machine: a 2-core x86_64 container, CPU only, one torch thread per run.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--score", action="store_true", help="score every candidate on every labelled set first")
    p.add_argument("--only", default=",".join(CANDIDATES), help="with --score: these candidates (comma-separated)")
    p.add_argument("--fresh", action="store_true", help="the winner on the fifth fresh set (once)")
    p.add_argument("--winners", action="store_true",
                   help="after the round: both searches' retrained winners, scored by both supernets and trained "
                        "600 steps from scratch")
    args = p.parse_args()
    if args.winners:
        winners(args.threads)
    if args.score:
        for key in args.only.split(","):
            for name, (seed, truth) in SETS.items():
                score(key, name, seed, truth, args.threads)
    from eval.supernet.round7 import fresh_look, write_record

    results = {key: evaluate(key) for key in CANDIDATES}
    chosen = winner(results)
    record = OUT / "round11.json"
    fresh = fresh_look(record, chosen, args.fresh, lambda key: run_fresh(key, args.threads),
                       "not every candidate is scored on every labelled set yet (run --score first)")
    write_record(record, results, chosen, fresh, report(results, chosen, fresh))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
