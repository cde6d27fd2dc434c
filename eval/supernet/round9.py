"""The ninth round (``results/round9/RULE.md``, written before the third fresh set was scored): a linear
calibration of the recipe's inherited-weight scores, chosen by leave-one-set-out Kendall tau over the four
labelled sets (120 architectures), the winner fitted on all of them and measured once on a third fresh set.

No supernet is trained and nothing is fine-tuned: every candidate reads the inherited-weight losses the
eighth round measured with the recipe's supernet (``results/round8/<set>/supernet-fidelity.json``), and the
fresh set is scored by the same supernet with ``run.py``'s fidelity stage.

    python eval/supernet/run.py --stages scratch --threads 1 --arch-seed 2029 --out eval/supernet/results/fresh2029
    python eval/supernet/round9.py              # the leave-one-set-out table, the winner, its calibration
    python eval/supernet/round9.py --fresh      # the winner on the third fresh set, once
    llmnas search shakespeare_char --set study=shakespeare_char_600 --set train.max_steps=600 \
        --set train.lr_decay_steps=null --set search.pruner.kind=none --set search.n_trials=40
    llmnas supernet calibrate supernet_shakespeare --from runs/shakespeare_char_600 \
        --out eval/supernet/results/round9/from_search.json
    python eval/supernet/round9.py --from-search eval/supernet/results/round9/from_search.json   # for the record

Results: ``results/round9/round9.md``, ``round9.json`` and ``calibration.json`` (the recipe's
``search.calibration``); the fresh set's stage files in ``results/round9/fresh2029/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "results" / "round9"
RESULTS = HERE / "results"
SCORED = RESULTS / "round8"
#: the labelled sets, each scored by the recipe's supernet in the eighth round: name -> folder of its scores
SETS = ("tuning", "main", "fresh2027", "fresh2028")
FRESH = ("fresh2029", "2029", RESULTS / "fresh2029")
#: candidate -> (a per-layer term, the decisions given an offset per value); None: the inherited loss alone
CANDIDATES: dict[str, tuple[bool, tuple[str, ...]] | None] = {
    "C0": None, "CD": (True, ()), "CP": (False, ("pos",)), "CDP": (True, ("pos",))}
SUPERNET = "runs/supernet_shakespeare/supernet"


def coefficients(key: str) -> int:
    spec = CANDIDATES[key]
    if spec is None:
        return 0
    per_layer, offsets = spec
    return 2 + per_layer + 2 * len(offsets)  # tiny_char has three positional schemes: two offsets


def rows(folder: Path) -> list[dict]:
    """One row per architecture of a scored set: the architecture, its truth, inherited loss and proxies."""
    from llmnas.space.arch import Architecture

    data = json.loads((folder / "supernet-fidelity.json").read_text())["fidelity"]["rows"]
    # the proxies signed so that a lower value predicts a lower loss, as the scorers are
    return [{"arch_id": r["arch_id"], "arch": Architecture.from_dict(r["arch"]), "truth": r["val_loss"],
             "inherited": r["supernet"], "searched": r["supernet_quick"], "params": -r["params"],
             "grad_norm": -r["grad_norm"]} for r in data]


def fit(key: str, train: list[dict]):
    """The candidate's calibration fitted on ``train`` (None for C0)."""
    from llmnas.supernet.calibration import fit as fit_calibration

    spec = CANDIDATES[key]
    if spec is None:
        return None
    per_layer, offsets = spec
    return fit_calibration([r["arch"] for r in train], [r["inherited"] for r in train],
                           [r["truth"] for r in train], offsets=offsets, per_layer=per_layer)


def scores(calibration, test: list[dict]) -> list[dict]:
    return [{**r, "scored": r["inherited"] if calibration is None else calibration.predict(r["arch"], r["inherited"])}
            for r in test]


def loso(sets: dict[str, list[dict]] | None = None) -> dict:
    """Each candidate's Kendall tau / Spearman rho on each labelled set, fitted on the other three (or on the
    others of ``sets``)."""
    from eval.supernet.round7 import stats

    sets = sets or {s: rows(SCORED / s) for s in SETS}
    out = {}
    for key in CANDIDATES:
        per_set = {}
        for held in sets:
            train = [r for s in sets if s != held for r in sets[s]]
            per_set[held] = stats(scores(fit(key, train), sets[held]), "scored")
        mean = sum(v["kendall_tau"] for v in per_set.values()) / len(per_set)
        out[key] = {"sets": per_set, "mean_tau": mean, "coefficients": coefficients(key)}
    return out


def winner(results: dict) -> str:
    """The rule: the highest mean held-out tau; a tie at three decimals goes to fewer coefficients, then to the
    earlier candidate."""
    order = list(CANDIDATES)
    return max(order, key=lambda k: (round(results[k]["mean_tau"], 3), -coefficients(k), -order.index(k)))


def final(key: str):
    """The winner fitted on all 120 labelled architectures (what the recipe's ``search.calibration`` holds)."""
    return fit(key, [r for s in SETS for r in rows(SCORED / s)])


def run_fresh(key: str, threads: int) -> dict:
    from eval.supernet import run
    from eval.supernet.round7 import stats

    name, seed, truth = FRESH
    folder = OUT / name
    if not (folder / "supernet-fidelity.json").exists():
        run.main(["--stages", "fidelity", "--threads", str(threads), "--arch-seed", seed, "--truth", str(truth),
                  "--out", str(folder), "--set", f"supernet.out={SUPERNET}"])
    calibration = final(key)
    test = scores(calibration, rows(folder))
    # for the record: the same calibration applied to the losses on the 200 windows a search scores on
    searched = scores(calibration, [{**r, "inherited": r["searched"]} for r in rows(folder)])
    # for the record, after the look (no choice made on it): leave one set out over all five sets
    five = {s: rows(SCORED / s) for s in SETS} | {name: rows(folder)}
    after = {k: {"sets": {s: v["kendall_tau"] for s, v in e["sets"].items()}, "mean_tau": e["mean_tau"]}
             for k, e in loso(five).items()}
    return {"candidate": key, "n": len(test), "chosen": stats(test, "scored"), "inherited": stats(test, "inherited"),
            "five_sets": after,
            "chosen_as_searched": stats(searched, "scored"), "inherited_as_searched": stats(searched, "inherited"),
            "params": stats(test, "params"), "grad_norm": stats(test, "grad_norm"),
            "calibration": None if calibration is None else calibration.to_dict()}


def from_search(path: Path) -> dict:
    """For the record: a calibration ``llmnas supernet calibrate`` fitted on a from-scratch search's own trials
    (``--out`` JSON), scored on every labelled set and the fresh one, beside the inherited loss alone."""
    from eval.supernet.round7 import stats
    from llmnas.supernet.calibration import Calibration

    written = json.loads(path.read_text())
    calibration = Calibration.from_dict(written["calibration"])
    sets = {s: rows(SCORED / s) for s in SETS} | {FRESH[0]: rows(OUT / FRESH[0])}
    sets["all five"] = [r for v in sets.values() for r in v]
    return {"source": written["study"], "n": written["n"], "calibration": written["calibration"],
            "kendall_tau_on_its_trials": written["kendall_tau"],
            "sets": {s: {"calibrated": stats(scores(calibration, v), "scored"), "inherited": stats(v, "inherited")}
                     for s, v in sets.items()}}


def report(results: dict, chosen: str, fresh: dict | None, searched: dict | None = None) -> str:
    from eval.supernet.budget import cell

    names = {"C0": "inherited loss alone", "CD": "+ per-layer term", "CP": "+ offset per positional scheme",
             "CDP": "+ per-layer term + offset per positional scheme"}
    lines = ["# The ninth round: calibrated inherited-weight scores, chosen by leave-one-set-out tau", "",
             "Kendall tau / Spearman rho against the 600-step from-scratch holdout loss. Each set is scored by the "
             "calibration fitted on the other three; the choice is the highest mean tau (RULE.md). Every score "
             f"comes from the recipe's supernet (`{SUPERNET}`) with inherited weights: no training step per "
             "searched architecture.", "",
             "| candidate | coefficients | " + " | ".join(f"{s} (held out)" for s in SETS) + " | **mean tau** |",
             "|---|---:|" + "---:|" * (len(SETS) + 1)]
    for key, e in results.items():
        mark = " **(chosen)**" if key == chosen else ""
        lines.append(f"| {key}{mark}: {names[key]} | {e['coefficients']} | "
                     + " | ".join(cell(e["sets"][s]) for s in SETS) + f" | **{e['mean_tau']:.3f}** |")
    calibration = final(chosen)
    if calibration is not None:
        lines += ["", f"The winner fitted on all {30 * len(SETS)} labelled architectures (`calibration.json`, the "
                  f"recipe's `search.calibration`): `{json.dumps(calibration.to_dict())}`"]
    if fresh is not None:
        from eval.supernet.round7 import fresh_table

        lines += fresh_table(
            fresh, "third", FRESH[1], f"{fresh['candidate']}, the calibration above",
            "inherited loss alone (the eighth round's scorer, for the record)",
            extra=(f"| {fresh['candidate']} on the 200 windows a search scores on (for the record) | "
                   f"{cell(fresh['chosen_as_searched'])} |",
                   f"| inherited loss alone on those 200 windows | {cell(fresh['inherited_as_searched'])} |"))
        five = fresh.get("five_sets")
        if five:
            names5 = list(next(iter(five.values()))["sets"])
            lines += ["", "For the record, after the look (nothing chosen on it): leave one set out over all five "
                      "sets, each scored by the calibration fitted on the other four (Kendall tau).", "",
                      "| candidate | " + " | ".join(names5) + " | mean |", "|---|" + "---:|" * (len(names5) + 1)]
            for k, e in five.items():
                lines.append(f"| {k} | " + " | ".join(f"{e['sets'][s]:.3f}" for s in names5)
                             + f" | {e['mean_tau']:.3f} |")
    if searched is not None:
        lines += ["", f"## A calibration fitted on a from-scratch search's own trials ({searched['n']} architectures "
                  f"of {searched['source']})", "",
                  "What a user does without labelled sets: `llmnas supernet calibrate supernet_shakespeare --from "
                  "<the from-scratch study>`. Its figures on its own trials: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in searched["kendall_tau_on_its_trials"].items())
                  + f". Its coefficients: `{json.dumps(searched['calibration'])}`. On the labelled sets (Kendall tau "
                  "/ Spearman rho):", "", "| set | calibrated | inherited loss alone |", "|---|---:|---:|"]
        for s, e in searched["sets"].items():
            lines.append(f"| {s} | {cell(e['calibrated'])} | {cell(e['inherited'])} |")
    lines += ["", "Machine: a 2-core x86_64 container, CPU only, one torch thread per run.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="the winner on the third fresh set (once)")
    p.add_argument("--from-search", type=Path, help="for the record: a calibration written by llmnas supernet "
                   "calibrate --out from a from-scratch search, scored on every set")
    args = p.parse_args()
    from eval.supernet.round7 import fresh_look, write_record

    results = loso()
    chosen = winner(results)
    calibration = final(chosen)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "calibration.json").write_text(
        json.dumps(None if calibration is None else calibration.to_dict(), indent=1) + "\n")
    record = OUT / "round9.json"
    fresh = fresh_look(record, chosen, args.fresh, lambda key: run_fresh(key, args.threads), "")
    searched = json.loads(record.read_text()).get("from_search") if record.exists() else None
    if args.from_search is not None:
        searched = from_search(args.from_search)
    write_record(record, results, chosen, fresh, report(results, chosen, fresh, searched))
    if searched is not None:  # kept beside the round's own record
        record.write_text(json.dumps({**json.loads(record.read_text()), "from_search": searched}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
