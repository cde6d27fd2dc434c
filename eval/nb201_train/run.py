"""NAS-Bench-201 cells trained for real on CIFAR-10 (2 CPU cores): ranking fidelity, a 100-trial search,
and the found cell against NAS-Bench-201's ResNet on Fashion-MNIST.

The protocol is the recipe's (``recipes/nb201_cifar10.yaml``): C=8, N=1, 2,500 images of NAS-Bench-201's
25,000-image training half, 2 epochs, batch 64, SGD-Nesterov 0.1 cosine, scored on 2,500 images of the
validation half. Stages (each appends to ``<out>/*.jsonl`` and skips what is there, so a rerun resumes):

1. ``tune``: the protocol's Spearman on 12 tuning cells (seed 777), disjoint from the reported ones.
2. ``rank``: 30 cells chosen before anything is trained (the first 30 distinct cells of a seed-0
   permutation of the official indices, isomorphic copies and the tuning cells skipped), each trained with
   the recipe's per-trial budget; Spearman rho and Kendall tau of the validation accuracy against the
   200-epoch CIFAR-10 test accuracy of the table (and, for reference, of the table's own 12-epoch accuracy).
3. ``search``: ``llmnas search`` on the recipe (``--recipe``; regularized evolution, 100 trials); the picked
   cell is the one with the lowest validation error among the trials that trained their whole budget (ties:
   the earliest trial); its 200-epoch table accuracies on CIFAR-10, CIFAR-100 and ImageNet16-120. With a
   pruner (``recipes/nb201_cifar10_sha.yaml``) it also counts the pruned trials and the epochs trained.
4. ``fmnist``: the picked cell (the confirmed one once ``confirm`` has run) and NAS-Bench-201's ResNet
   retrained from scratch on Fashion-MNIST with one budget (the recipe's ``retrain`` section: 20,000 training
   images, 2 epochs), test accuracy on the 10,000 test images.
5. ``rerank`` (a post-hoc diagnostic, added after the search's pick was seen): the search's best 5 cells by
   validation error retrained with 4x the training images, to see whether the short budget's preference
   for skip-heavy cells survives a longer one.
6. ``confirm`` (``--confirm-rule``, each rule fixed in its RULE.md before it was run): ``llmnas confirm`` on
   the search's study: its best 5 distinct cells retrained from scratch, scored on all 25,000 validation
   images; the confirmed pick is the highest mean; its table accuracies beside the search's own pick.
   ``confirm`` (``results/confirm/RULE.md``): seeds 1, 2, 3 at the recipe's budget; ``confirm4x``
   (``results/confirm4x/RULE.md``): seeds 1, 2 on 4x the training images (10,000). ``--shard K/N`` shares the
   runs between processes; ``<out>/<rule>.json`` once all are stored.
7. ``report``: ``<out>/results.md`` and ``<out>/results.json``.

    python eval/nb201_train/run.py --threads 1                         # rank, search, fmnist, report
    python eval/nb201_train/run.py --stages rank --threads 1           # one stage (rank and search may run at once)
    python eval/nb201_train/run.py --stages search,report --recipe recipes/nb201_cifar10_sha.yaml \
        --out eval/nb201_train/results/sha                            # the successive-halving search
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llmnas.benchmarks.nb201 import DATASETS, NB201Table, load_nb201  # noqa: E402
from llmnas.errors import LlmnasError  # noqa: E402
from llmnas.recipe import load_recipe  # noqa: E402
from llmnas.search.confirm import parse_shard  # noqa: E402
from llmnas.space.nb201 import NB201Cell  # noqa: E402
from llmnas.vision.data import load_images, nb201_split  # noqa: E402
from llmnas.vision.recipe import VisionRecipe  # noqa: E402
from llmnas.vision.train import RESNET, VisionTrainConfig, make_accelerator, stratified_subset, train_cell  # noqa: E402

STAGES = ("tune", "rank", "search", "fmnist", "rerank", "confirm", "report")
# Confirmation rules, each fixed in results/<name>/RULE.md before it was run: (top k, seeds, training images
# per run; None: the recipe's). When a search has several, the last one here is the one reported and retrained.
CONFIRM_RULES = {"confirm": (5, (1, 2, 3), None), "confirm4x": (5, (1, 2), 10_000)}
RERANK_TOP, RERANK_FACTOR = 5, 4
RECIPE = ROOT / "recipes" / "nb201_cifar10.yaml"
TABLES = ROOT.parent / "shared" / "data" / "nasbench201"
FASHION = Path("/usr/share/datasets/fashion-mnist")
TUNE_SEED, TUNE_CELLS = 777, 12
RANK_SEED, RANK_CELLS = 0, 30
PUBLISHED = [  # NAS-Bench-201 paper (Dong & Yang, ICLR 2020), Table 5, as quoted in ../shared/data/PROVENANCE.md
    ("ResNet", "93.97 / 70.86 / 43.63"),
    ("REINFORCE (table-based, 12-epoch signal)", "93.85 ± 0.37 / 71.71 ± 1.09 / 45.24 ± 1.18"),
    ("random search (table-based)", "93.70 ± 0.36 (CIFAR-10)"),
    ("optimal cell in the table", "94.37 / 73.51 / 47.31"),
]


def pick_cells(table: NB201Table, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[int]:
    """``n`` official indices in the order of a seeded permutation, one per isomorphism class, none excluded."""
    seen = set(exclude)
    out = []
    for i in np.random.default_rng(seed).permutation(len(table)):
        key = table.cell(int(i)).unique_str()
        if key not in seen:
            seen.add(key)
            out.append(int(i))
            if len(out) == n:
                break
    return out


def md_cell(text: str) -> str:
    """A cell string as Markdown table content (its ``|`` escaped)."""
    return "`" + text.replace("|", "\\|") + "`"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def train_cells(indices: list[int], recipe: VisionRecipe, table: NB201Table, path: Path,
                shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Train each cell with the recipe's per-trial budget; one JSON line per cell, resumable.

    ``shard`` (k, n): train only the cells at positions k, k + n, ... (``--shard k/n``); the processes append to
    the same JSON-lines file, and the stage returns once every cell is there."""
    data = load_images(recipe.data.source)
    train_idx, valid_idx = nb201_split(data, recipe.data.split_seed)
    valid = stratified_subset(valid_idx, data.train_y[valid_idx], recipe.data.valid_images, recipe.data.valid_seed)
    accelerator = make_accelerator(recipe.train)
    done = {r["index"] for r in read_jsonl(path)}
    for k, index in enumerate(indices):
        if index in done or k % shard[1] != shard[0]:
            continue
        cell = table.cell(index)
        t0 = time.perf_counter()
        _, r = train_cell(cell, data, train_idx, {"valid": valid}, recipe.train, accelerator)
        row = {"index": index, "cell": cell.to_str(), "val_acc": r.accuracy["valid"], "val_loss": r.loss["valid"],
               "table_test200": {d: float(table.metric("test200", d)[index]) for d in DATASETS},
               "table_val12_cifar10": float(table.metric("val12", "cifar10")[index]),
               "params": r.params, "train_seconds": r.train_seconds, "seconds": time.perf_counter() - t0,
               "images_per_second": r.images_per_second, "history": r.history}
        append(path, row)
        print(f"[{k + 1}/{len(indices)}] {index}: val {r.accuracy['valid']:.2f} "
              f"table {row['table_test200']['cifar10']:.2f} ({row['seconds']:.0f}s, {r.images_per_second:.0f} img/s)",
              flush=True)
    rows = {r["index"]: r for r in read_jsonl(path)}
    missing = [i for i in indices if i not in rows]
    if missing:
        raise LlmnasError(f"{path}: {len(missing)} cell(s) not trained yet (another --shard's); rerun the stage "
                          "once every shard has finished")
    return [rows[i] for i in indices]


def correlations(rows: list[dict]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    val = [r["val_acc"] for r in rows]
    truth = [r["table_test200"]["cifar10"] for r in rows]
    ref = [r["table_val12_cifar10"] for r in rows]
    return {"n": len(rows), "spearman": float(spearmanr(val, truth).statistic),
            "kendall": float(kendalltau(val, truth).statistic),
            "spearman_table12": float(spearmanr(ref, truth).statistic),
            "kendall_table12": float(kendalltau(ref, truth).statistic),
            "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
            "images_per_second_mean": float(np.mean([r["images_per_second"] for r in rows]))}


def epoch_correlations(rows: list[dict]) -> dict[int, float]:
    """Spearman rho against the 200-epoch table of the validation accuracy after each epoch that every row
    measured (the figures a pruner reads inside the schedule; the last is the final accuracy)."""
    from scipy.stats import spearmanr

    histories = [{int(e): acc for e, acc, _ in r.get("history", [])} for r in rows]
    common = sorted(set.intersection(*(set(h) for h in histories))) if histories else []
    truth = [r["table_test200"]["cifar10"] for r in rows]
    return {e: float(spearmanr([h[e] for h in histories], truth).statistic) for e in common}


def stage_tune(recipe: VisionRecipe, table: NB201Table, out: Path, shard: tuple[int, int] = (0, 1)) -> dict:
    rows = train_cells(pick_cells(table, TUNE_CELLS, TUNE_SEED), recipe, table, out / "tune.jsonl", shard)
    return correlations(rows)


def stage_rank(recipe: VisionRecipe, table: NB201Table, out: Path, shard: tuple[int, int] = (0, 1)) -> dict:
    tuning = {table.cell(i).unique_str() for i in pick_cells(table, TUNE_CELLS, TUNE_SEED)}
    rows = train_cells(pick_cells(table, RANK_CELLS, RANK_SEED, tuning), recipe, table, out / "rank.jsonl", shard)
    return correlations(rows)


def stage_search(recipe: VisionRecipe, table: NB201Table, out: Path) -> dict:
    from llmnas.search import run_search

    started = time.perf_counter()
    summary = run_search(recipe, show_progress=True)
    trials = []
    for t in summary.study.get_trials(deepcopy=False):
        a = t.user_attrs
        trials.append({"number": t.number, "state": t.state.name, "values": t.values, "cell": a.get("cell"),
                       "val_acc": a.get("val_acc"), "reused_from": a.get("reused_from"),
                       "ground_truth": a.get("ground_truth"), "train_seconds": a.get("train_seconds"),
                       "images_per_second": a.get("images_per_second"),
                       "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                       "pruned_at_epoch": a.get("pruned_at_step")})
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(done, key=lambda t: (t["values"][0], t["number"]))
    trained = [t for t in done if t["reused_from"] is None]
    pruned = [t for t in trials if t["state"] == "PRUNED" and t["reused_from"] is None]
    truth = [t["ground_truth"]["cifar10_test200"] for t in trained]
    seen = [t["ground_truth"]["cifar10_test200"] for t in trained + pruned]
    epochs = recipe.train.epochs or 0
    record = {"trials": len(trials), "trained": len(trained), "pruned": len(pruned),
              "epochs_trained": len(trained) * epochs + sum(t["pruned_at_epoch"] for t in pruned),
              "epochs_per_trial": epochs, "pruner": dataclasses.asdict(recipe.search.pruner),
              "eval_every_epochs": recipe.train.eval_every_epochs, "picked": best,
              "picked_table": {d: best["ground_truth"][f"{d}_test200"] for d in DATASETS},
              "best_evaluated_table_cifar10": max(truth), "best_seen_table_cifar10": max(seen),
              "mean_evaluated_table_cifar10": float(np.mean(truth)),
              "search_seconds": time.perf_counter() - started, "study_dir": str(summary.study_dir)}
    (out / "search_trials.json").write_text(json.dumps(trials, indent=1) + "\n")
    (out / "search.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def stage_rerank(recipe: VisionRecipe, table: NB201Table, out: Path,
                 shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Post-hoc diagnostic, decided after seeing the search's pick: the search's best 5 distinct cells by
    validation error retrained with 4x the training images (same epochs, seed and scored images), to see
    whether the short budget's preference for skip-heavy cells survives a longer one."""
    trials = json.loads((out / "search_trials.json").read_text())
    done = sorted((t for t in trials if t["state"] == "COMPLETE" and t["reused_from"] is None),
                  key=lambda t: (t["values"][0], t["number"]))
    indices = [t["ground_truth"]["index"] for t in done[:RERANK_TOP]]
    longer = dataclasses.replace(recipe, train=recipe.train.replace(
        train_images=RERANK_FACTOR * (recipe.train.train_images or 25000)))
    return train_cells(indices, longer, table, out / "rerank.jsonl", shard)


def stage_confirm(recipe: VisionRecipe, out: Path, shard: tuple[int, int] = (0, 1),
                  rule: str = "confirm") -> dict | None:
    """``llmnas confirm`` on the search's study under one of ``CONFIRM_RULES`` (its RULE.md: best k cells, its
    seeds and training images per run, the whole validation half); ``<out>/<rule>.json`` once every run is stored
    (any shard's)."""
    from llmnas.search.confirm import confirm_vision_study

    top_k, seeds, train_images = CONFIRM_RULES[rule]
    if train_images is not None:
        recipe = dataclasses.replace(recipe, train=recipe.train.replace(train_images=train_images))
    summary = confirm_vision_study(recipe, top_k=top_k, seeds=seeds, valid_images=None, shard=shard)
    if summary.pick is None:
        print(f"confirm: {len(summary.missing)} run(s) still to come from another shard; rerun the stage then")
        return None
    pick = summary.pick
    runs = len(summary.candidates) * len(summary.seeds)
    record = {**summary.to_dict(), "rule": rule, "trained_now": summary.trained, "seconds": summary.seconds,
              "runs": runs, "epochs": runs * (recipe.train.epochs or 0),
              "train_seconds": sum(c["train_seconds"] for c in summary.candidates),
              "picked_table": {d: pick["ground_truth"][f"{d}_test200"] for d in DATASETS}}
    (out / f"{rule}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def confirmed(out: Path) -> list[dict]:
    """The confirmation records of ``out``, in ``CONFIRM_RULES`` order (the last is the reported one)."""
    return [json.loads((out / f"{r}.json").read_text()) for r in CONFIRM_RULES if (out / f"{r}.json").exists()]


def stage_fmnist(recipe: VisionRecipe, out: Path, cell: str | None) -> list[dict]:
    records = confirmed(out)
    if cell is None and records:  # the confirmed pick (the last rule's), where the search was confirmed
        cell = records[-1]["pick"]["cell"]
    if cell is None:
        search = out / "search.json"
        if not search.exists():
            raise LlmnasError(f"{search}: run the search stage first, or give --cell")
        cell = json.loads(search.read_text())["picked"]["cell"]
    cell = NB201Cell.from_str(cell).to_str() if cell != RESNET else cell  # one clear error for a bad string
    cfg: VisionTrainConfig = recipe.retrain or recipe.train
    data = load_images(FASHION)
    train_idx = torch.arange(len(data.train_y))
    accelerator = make_accelerator(cfg)
    path = out / "fmnist.jsonl"
    rows = {r["network"]: r for r in read_jsonl(path)}
    for network in (cell, RESNET):
        if network in rows:
            continue
        _, r = train_cell(network, data, train_idx, {"test": (data.test_x, data.test_y)}, cfg, accelerator)
        row = {"network": network, "test_acc": r.accuracy["test"], "params": r.params, "steps": r.steps,
               "train_images": r.train_images, "train_seconds": r.train_seconds,
               "images_per_second": r.images_per_second, "C": cfg.C, "N": cfg.N, "epochs": cfg.epochs,
               "batch_size": cfg.batch_size}
        append(path, row)
        rows[network] = row
        print(f"Fashion-MNIST {network}: test {r.accuracy['test']:.2f} % ({r.train_seconds:.0f}s)", flush=True)
    return [rows[cell], rows[RESNET]]


def protocol(cfg: VisionTrainConfig) -> str:
    images = f"{cfg.train_images / 1000:g}k" if cfg.train_images else "25k"
    return f"C={cfg.C}, N={cfg.N}, {images} images x {cfg.epochs:g} epochs"


def report(out: Path, command: str, recipe: VisionRecipe) -> str:
    rank = read_jsonl(out / "rank.jsonl")
    tune = read_jsonl(out / "tune.jsonl")
    search = json.loads((out / "search.json").read_text()) if (out / "search.json").exists() else None
    fmnist = read_jsonl(out / "fmnist.jsonl")
    lines = ["## NAS-Bench-201 cells trained on CIFAR-10 (2-core x86_64 container, CPU only, shared)", "",
             f"Command: `{command}`", ""]
    record: dict = {"machine": platform.platform(), "torch": torch.__version__}
    epoch_lines: list[str] = []
    lines += ["| cells | protocol | Spearman rho vs 200-epoch table | Kendall tau | (table's 12-epoch: rho / tau) "
              "| s / cell | images/s |", "|---|---|---|---|---|---|---|"]
    for name, rows in (("tuning (seed 777)", tune), ("reported (seed 0)", rank)):
        if len(rows) >= 3:
            c = correlations(rows)
            record[name] = c
            lines.append(f"| {c['n']} {name} | {protocol(recipe.train)} | {c['spearman']:.3f} | "
                         f"{c['kendall']:.3f} | {c['spearman_table12']:.3f} / {c['kendall_table12']:.3f} | "
                         f"{c['seconds_mean']:.0f} | {c['images_per_second_mean']:.0f} |")
            by_epoch = epoch_correlations(rows)
            if len(by_epoch) > 1:
                record[name]["spearman_by_epoch"] = by_epoch
                epoch_lines.append(f"- {name}: " + ", ".join(f"epoch {e}: {r:.3f}" for e, r in by_epoch.items()))
    if epoch_lines:
        lines += ["", "Spearman rho inside the schedule (the validation accuracy after each measured epoch, as a "
                  "pruner reads it; the last is the final accuracy):", "", *epoch_lines]
    if search:
        record["search"] = search
        p = search["picked_table"]
        kind = search.get("pruner", {}).get("kind", "none")
        options = ", ".join(f"{k} {v}" for k, v in search.get("pruner", {}).get("options", {}).items())
        label = "evolution, val_error" + (f", {kind} pruner ({options}), validation every "
                                          f"{search['eval_every_epochs']} epochs, {search['epochs_per_trial']:g} "
                                          "epochs at most" if kind != "none" else "")
        trained = (f"{search['trained']} whole, {search['pruned']} pruned; {search['epochs_trained']:g} epochs"
                   if kind != "none" else search["trained"])
        lines += ["", "| search | trials (trained) | picked cell | CIFAR-10 | CIFAR-100 | ImageNet16-120 | "
                  "best / mean trained whole (CIFAR-10) | wall |", "|---|---|---|---|---|---|---|---|",
                  f"| {label} | {search['trials']} ({trained}) | "
                  f"{md_cell(search['picked']['cell'])} | "
                  f"{p['cifar10']:.2f} | {p['cifar100']:.2f} | {p['imagenet16-120']:.2f} | "
                  f"{search['best_evaluated_table_cifar10']:.2f} / {search['mean_evaluated_table_cifar10']:.2f} | "
                  f"{search['search_seconds'] / 60:.0f} min |"]
        lines += ["", "Published (200-epoch table accuracy, CIFAR-10 / CIFAR-100 / ImageNet16-120):", ""]
        lines += [f"- {name}: {value}" for name, value in PUBLISHED]
    rerank = read_jsonl(out / "rerank.jsonl")
    if rerank and search:
        short = {t["cell"]: t for t in json.loads((out / "search_trials.json").read_text())}
        record["rerank"] = rerank
        lines += ["", f"Post-hoc diagnostic (decided after seeing the pick): the search's best {len(rerank)} cells "
                  f"retrained with {RERANK_FACTOR}x the training images.", "",
                  "| cell | val acc, search budget | val acc, 4x images | table CIFAR-10 |", "|---|---|---|---|"]
        lines += [f"| {md_cell(r['cell'])} | {short[r['cell']]['val_acc']:.2f} | {r['val_acc']:.2f} | "
                  f"{r['table_test200']['cifar10']:.2f} |" for r in rerank]
    for confirm in confirmed(out) if search else []:
        rule = confirm.get("rule", "confirm")
        record[rule] = confirm  # "confirm", "confirm4x": one key per rule
        p, images = confirm["picked_table"], confirm["protocol"]["data"]["valid_images"]
        seeds = ", ".join(map(str, confirm["seeds"]))
        per_run = confirm["protocol"]["train"]["train_images"]
        lines += ["", f"Confirmation (`results/{rule}/RULE.md`): the search's best {len(confirm['candidates'])} cells "
                  f"retrained with seeds {seeds} on {per_run:,} training images each ({confirm['epochs']:g} epochs "
                  f"in all, {confirm['train_seconds'] / 60:.0f} min of training), scored on "
                  f"{'all' if images is None else images} validation images; the pick has the highest mean.",
                  "", "| search rank | trial | search val_error | " + " | ".join(f"seed {s}" for s in confirm["seeds"])
                  + " | mean ± std | table CIFAR-10 (ground truth) |", "|" + "---|" * (5 + len(confirm["seeds"]))]
        for c in confirm["candidates"]:
            mark = " **pick**" if c["trial"] == confirm["pick"]["trial"] else ""
            lines.append(f"| {c['search_rank']}{mark} | {c['trial']} | {c['search_value']:.2f} | "
                         + " | ".join(f"{c['val_acc'][str(s)]:.2f}" for s in confirm["seeds"])
                         + f" | {c['mean']:.2f} ± {c['std'] or 0:.2f} | {c['ground_truth']['cifar10_test200']:.3f} |")
        from scipy.stats import spearmanr

        truth = [c["ground_truth"]["cifar10_test200"] for c in confirm["candidates"]]
        if len(truth) >= 3:  # a rank correlation of fewer cells says nothing
            single = float(spearmanr([-c["search_value"] for c in confirm["candidates"]], truth).statistic)
            mean = float(spearmanr([c["mean"] for c in confirm["candidates"]], truth).statistic)
            record[f"{rule}_spearman"] = {"search_single_run": single, "confirmed_mean": mean}
            lines += ["", f"Spearman rho against the table over these {len(truth)} cells: the search's single run "
                      f"{single:.2f}, the confirmed mean {mean:.2f}."]
        lines += ["", f"Confirmed pick ({rule}) {md_cell(confirm['pick']['cell'])}: **{p['cifar10']:.3f} / "
                  f"{p['cifar100']:.3f} / {p['imagenet16-120']:.3f}** (CIFAR-10 / CIFAR-100 / ImageNet16-120, "
                  "200-epoch table, to the table's precision)."]
    if fmnist:
        record["fmnist"] = fmnist
        lines += ["", "| Fashion-MNIST (same budget) | params | test accuracy % | train s |", "|---|---|---|---|"]
        lines += [f"| {'NAS-Bench-201 ResNet' if r['network'] == RESNET else md_cell(r['network'])} | "
                  f"{r['params']:,} | {r['test_acc']:.2f} | {r['train_seconds']:.0f} |" for r in fmnist]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="rank,search,fmnist,report")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "eval" / "nb201_train" / "results")
    p.add_argument("--recipe", type=Path, default=RECIPE,
                   help="the search recipe (default: recipes/nb201_cifar10.yaml; recipes/nb201_cifar10_sha.yaml: "
                        "successive halving)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, e.g. search.n_trials=10 (changes what is reported)")
    p.add_argument("--shard", default="0/1", metavar="K/N",
                   help="train only every N-th cell of a stage, from the K-th (run N processes to share the cores)")
    p.add_argument("--confirm-rule", default="confirm", choices=list(CONFIRM_RULES),
                   help="the confirm stage's rule (results/<rule>/RULE.md; default: confirm)")
    p.add_argument("--cell", help="the cell retrained on Fashion-MNIST (default: the confirmed pick, else the "
                   "search's pick)")
    args = p.parse_args(argv)
    try:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise LlmnasError(f"--stages: unknown stage {bad[0]!r} (allowed: {', '.join(STAGES)})")
        if args.cell is not None and args.cell != RESNET:
            try:
                NB201Cell.from_str(args.cell)
            except ValueError as e:
                raise LlmnasError(f"--cell: {e}") from None
        shard = parse_shard(args.shard)
        torch.set_num_threads(args.threads)
        overrides = [f"run_dir={ROOT / 'runs' / 'eval_nb201_train'}", *args.overrides]
        recipe = load_recipe(args.recipe, overrides)
        assert isinstance(recipe, VisionRecipe)
        table = load_nb201(TABLES)
        args.out.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            if stage == "tune":
                print(json.dumps(stage_tune(recipe, table, args.out, shard)))
            elif stage == "rank":
                print(json.dumps(stage_rank(recipe, table, args.out, shard)))
            elif stage == "search":
                print(json.dumps(stage_search(recipe, table, args.out)["picked_table"]))
            elif stage == "rerank":
                print(json.dumps([(r["val_acc"], r["table_test200"]["cifar10"]) for r in
                                  stage_rerank(recipe, table, args.out, shard)]))
            elif stage == "confirm":
                done = stage_confirm(recipe, args.out, shard, args.confirm_rule)
                print(json.dumps(done["picked_table"] if done else None))
            elif stage == "fmnist":
                print(json.dumps(stage_fmnist(recipe, args.out, args.cell)))
            else:
                print(report(args.out, "python eval/nb201_train/run.py " + " ".join(argv or sys.argv[1:]), recipe))
    except LlmnasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
