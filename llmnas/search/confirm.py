"""``llmnas confirm``: re-measure the best cells of a finished vision study before choosing one.

A search picks by one number per cell: one training run (one seed, one training subset) scored on the recipe's
validation images. Among the best few cells of a search that number differs by less than its own noise, so the
pick is decided by noise. Confirmation retrains the study's best ``top_k`` distinct cells (by the first
objective; ties: the earliest trial) from scratch with the recipe's budget (or a larger one, given as a recipe
override such as ``train.train_images``: another protocol) and other training seeds (the seed sets
the initialisation, the image order, the augmentation and the class-stratified training subset), scores each run
on more validation images (``valid_images``; ``None``: the whole validation half, never the test images), and
picks the cell with the highest mean validation accuracy over the seeds (ties: the better search rank).

Every finished run is stored at once as a study user attribute (``confirm:<protocol>:<cell>:<seed>``, one key
per run, so processes sharing the work with ``shard`` never overwrite each other), which makes confirmation
resumable and visible in optuna-dashboard. A run of another protocol (other budget, split or validation images)
has another key and is never mixed in. The summary is written to ``<study_dir>/confirm.md`` and
``confirm.json``; the ground truth of each cell (NAS-Bench-201's table, when the study recorded it) is shown in
its own marked column and never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from llmnas.errors import RecipeError
from llmnas.search.study import StudyError
from llmnas.vision.recipe import VisionRecipe

PREFIX = "confirm:"


@dataclass
class ConfirmSummary:
    """The candidates, every stored run of this protocol, and the pick once every run is there."""

    candidates: list[dict[str, Any]]
    """One per candidate cell, in search order: trial, cell, search value, val_acc (seed -> accuracy), mean, std."""
    seeds: tuple[int, ...]
    protocol: dict[str, Any]
    trained: int = 0
    """Runs this call trained (the others were stored before)."""
    missing: list[tuple[int, int]] = field(default_factory=list)
    """(trial, seed) of the runs not stored yet (another shard's)."""
    pick: dict[str, Any] | None = None
    seconds: float = 0.0
    summary_path: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "seeds": list(self.seeds), "candidates": self.candidates,
                "pick": self.pick, "missing": [list(m) for m in self.missing]}


def cell_key(trial: FrozenTrial) -> str:
    """The trial's cell up to isomorphism (NAS-Bench-201's unique string), else its cell string."""
    return trial.user_attrs.get("cell_key", trial.user_attrs["cell"])


def candidates(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The best ``top_k`` distinct cells of the study: completed trials that trained (not a copy of an earlier
    trial), by the first objective, ties the earliest."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "reused_from" not in t.user_attrs and "cell" in t.user_attrs]
    done.sort(key=lambda t: (t.values[0], t.number))
    out, seen = [], set()
    for t in done:
        key = cell_key(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out[:top_k]


def protocol_of(recipe: VisionRecipe, valid_images: int | None) -> dict[str, Any]:
    """What a confirmation run's figure depends on, besides the cell and the seed."""
    train = dataclasses.asdict(recipe.train)
    for name in ("seed", "eval_every_epochs", "log_interval", "eval_batch_size"):
        train.pop(name)
    return {"data": {"source": recipe.data.source, "split_seed": recipe.data.split_seed,
                     "valid_images": valid_images, "valid_seed": recipe.data.valid_seed}, "train": train}


def protocol_tag(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:10]


def stored_runs(study: optuna.Study, tag: str) -> dict[tuple[str, int], dict[str, Any]]:
    """(cell key, seed) -> the stored row, for this protocol."""
    out = {}
    for key, row in study.user_attrs.items():
        if key.startswith(f"{PREFIX}{tag}:") and isinstance(row, dict):
            out[(row["cell_key"], int(row["seed"]))] = row
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard K/N`` as (k, n), with 0 <= k < n; one error naming the flag otherwise."""
    try:
        k, n = (int(x) for x in text.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise RecipeError(f"--shard {text!r}: must be K/N with 0 <= K < N, e.g. 1/2") from None
    return k, n


def check_options(top_k: int, seeds: tuple[int, ...], valid_images: int | None, shard: tuple[int, int]) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise RecipeError(f"--top-k {top_k!r}: must be a positive integer")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise RecipeError(f"--seeds {','.join(map(str, seeds)) or '(none)'}: give one or more non-negative "
                          "integers, e.g. 1,2,3")
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"--seeds {','.join(map(str, seeds))}: a seed is repeated")
    if valid_images is not None and (isinstance(valid_images, bool) or valid_images < 1):
        raise RecipeError(f"--valid-images {valid_images!r}: must be a positive integer, or 'all'")
    k, n = shard
    if not 0 <= k < n:
        raise RecipeError(f"--shard {k}/{n}: must be K/N with 0 <= K < N, e.g. 1/2")


def confirm_vision_study(recipe: VisionRecipe, *, top_k: int = 5, seeds: tuple[int, ...] = (1, 2, 3),
                         valid_images: int | None = None, shard: tuple[int, int] = (0, 1),
                         show_progress: bool = True) -> ConfirmSummary:
    """Retrain the study's best ``top_k`` cells with each of ``seeds`` and pick by the mean validation accuracy.

    ``shard`` (k, n): train only the runs at positions k, k + n, ... of the (candidate, seed) list, so that n
    processes share them; each process reports the pick once every run is stored."""
    from llmnas.search.study import load_study
    from llmnas.search.vision import VisionTask
    from llmnas.space.nb201 import NB201Cell
    from llmnas.vision.train import make_accelerator, train_cell

    if getattr(recipe, "kind", None) != "vision":
        raise RecipeError(f"{recipe.source}: llmnas confirm retrains cells of a vision study (space nasbench201); "
                          "for a transformer study retrain the winner with: llmnas train RECIPE --trial best --seed N")
    seeds = tuple(seeds)
    check_options(top_k, seeds, valid_images, shard)
    started = time.perf_counter()
    study = load_study(recipe.storage_url, recipe.study)
    best = candidates(study, top_k)
    if not best:
        raise StudyError(f"study {recipe.study!r} ({recipe.storage_url}) has no completed trial to confirm yet")
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    if running and show_progress:
        print(f"note: {running} trial(s) of study {recipe.study!r} are still running; the best {top_k} may change")
    protocol = protocol_of(recipe, valid_images)
    tag = protocol_tag(protocol)
    runs = stored_runs(study, tag)
    jobs = [(t, s) for t in best for s in seeds]
    todo = [(t, s) for j, (t, s) in enumerate(jobs)
            if j % shard[1] == shard[0] and (cell_key(t), s) not in runs]
    trained = 0
    if todo:
        confirm_recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, valid_images=valid_images))
        accelerator = make_accelerator(recipe.train)
        if accelerator.num_processes > 1:
            raise RecipeError("llmnas confirm runs in one process per command: start it in several shells with "
                              "--shard K/N to share the runs")
        task = VisionTask.from_recipe(confirm_recipe)
        if show_progress:
            print(f"confirming the best {len(best)} cell(s) of study {recipe.study!r}: {len(todo)} run(s) of "
                  f"{recipe.train.epochs or recipe.train.max_steps} {'epochs' if recipe.train.epochs else 'steps'}, "
                  f"seeds {','.join(map(str, seeds))}, scored on {len(task.valid_idx)} validation images")
        for t, seed in todo:
            cfg = recipe.train.replace(seed=seed, eval_every_epochs=None)
            cell = NB201Cell.from_str(t.user_attrs["cell"])
            _, r = train_cell(cell, task.data, task.train_idx, {"valid": task.valid_idx}, cfg, accelerator)
            key = cell_key(t)
            row = {"trial": t.number, "cell": cell.to_str(), "cell_key": key, "seed": seed,
                   "val_acc": r.accuracy["valid"], "val_loss": r.loss["valid"], "valid_images": len(task.valid_idx),
                   "train_images": r.train_images, "steps": r.steps, "train_seconds": r.train_seconds,
                   "images_per_second": r.images_per_second}
            study.set_user_attr(f"{PREFIX}{tag}:{key}:{seed}", row)
            runs[(key, seed)] = row
            trained += 1
            if show_progress:
                print(f"trial {t.number} seed {seed}: val_acc {r.accuracy['valid']:.2f} on {len(task.valid_idx)} "
                      f"images ({r.train_seconds:.0f}s)  {cell.to_str()}", flush=True)
        runs = stored_runs(study, tag)  # with the other shards' runs stored meanwhile
    summary = summarize(recipe, best, seeds, protocol, runs)
    summary.trained, summary.seconds = trained, time.perf_counter() - started
    recipe.study_dir.mkdir(parents=True, exist_ok=True)
    text = confirm_table(recipe, summary)
    summary.summary_path = recipe.study_dir / "confirm.md"
    summary.summary_path.write_text(text, encoding="utf-8")
    (recipe.study_dir / "confirm.json").write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    if summary.pick is not None:
        study.set_user_attr(f"confirmed_pick:{tag}", summary.pick)
    if show_progress:
        print("\n" + text)
        print(f"wrote {summary.summary_path}; {trained} run(s) trained in {summary.seconds:.0f}s")
    return summary


def summarize(recipe: VisionRecipe, best: list[FrozenTrial], seeds: tuple[int, ...], protocol: dict[str, Any],
              runs: dict[tuple[str, int], dict[str, Any]]) -> ConfirmSummary:
    rows, missing = [], []
    for rank, t in enumerate(best, 1):
        key = cell_key(t)
        got = {s: runs[(key, s)] for s in seeds if (key, s) in runs}
        missing += [(t.number, s) for s in seeds if s not in got]
        accs = [got[s]["val_acc"] for s in seeds if s in got]
        rows.append({"search_rank": rank, "trial": t.number, "cell": t.user_attrs["cell"],
                     "search_value": t.values[0], "objective": recipe.search.objectives[0],
                     "val_acc": {str(s): got[s]["val_acc"] for s in seeds if s in got},
                     "mean": statistics.fmean(accs) if accs else None,
                     "std": statistics.stdev(accs) if len(accs) > 1 else None,
                     "train_seconds": sum(got[s]["train_seconds"] for s in got),
                     "ground_truth": t.user_attrs.get("ground_truth")})
    pick = None
    if not missing:
        pick = max(rows, key=lambda r: (r["mean"], -r["search_rank"]))  # ties: the better search rank
    return ConfirmSummary(rows, seeds, protocol, missing=missing, pick=pick)


def budget(train: dict[str, Any]) -> str:
    """A run's budget in words, e.g. '2,500 training images x 18 epochs'."""
    images = "all training images" if train["train_images"] is None else f"{train['train_images']:,} training images"
    length = f"{train['epochs']:g} epochs" if train["epochs"] else f"{train['max_steps']} steps"
    return f"{images} x {length}"


def confirm_table(recipe: VisionRecipe, summary: ConfirmSummary) -> str:
    seeds = summary.seeds
    images = summary.protocol["data"]["valid_images"]
    lines = [f"# {recipe.study}: the best {len(summary.candidates)} cells confirmed", "",
             f"Each retrained from scratch ({budget(summary.protocol['train'])}) with seeds "
             f"{', '.join(map(str, seeds))}, scored on "
             f"{'all' if images is None else images} validation images; the pick has the highest mean (ties: the "
             "better search rank).", "",
             f"| search rank | trial | {summary.candidates[0]['objective']} (search) | "
             + " | ".join(f"val_acc seed {s}" for s in seeds)
             + " | mean | std | cell | table CIFAR-10 200ep (ground truth, unused) |",
             "|" + "---|" * (7 + len(seeds))]
    for r in summary.candidates:
        accs = " | ".join(f"{r['val_acc'][str(s)]:.2f}" if str(s) in r["val_acc"] else "-" for s in seeds)
        mean = "-" if r["mean"] is None else f"{r['mean']:.2f}"
        std = "-" if r["std"] is None else f"{r['std']:.2f}"
        cell = "`" + r["cell"].replace("|", "\\|") + "`"  # a table cell: its '|' escaped
        truth = (r["ground_truth"] or {}).get("cifar10_test200")
        mark = " **pick**" if summary.pick is not None and r["trial"] == summary.pick["trial"] else ""
        lines.append(f"| {r['search_rank']}{mark} | {r['trial']} | {r['search_value']:.4g} | {accs} | {mean} | "
                     f"{std} | {cell} | {'' if truth is None else f'{truth:.2f}'} |")
    if summary.missing:
        lines += ["", f"{len(summary.missing)} run(s) not stored yet (another shard's): "
                  + ", ".join(f"trial {t} seed {s}" for t, s in summary.missing) + "; rerun once they are."]
    return "\n".join(lines) + "\n"
