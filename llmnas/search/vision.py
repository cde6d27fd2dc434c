"""``llmnas search`` on a vision cell space: every trial trains the sampled cell from scratch on images.

The study, sampler, storage, locking and trial loop are the transformer search's
(:func:`llmnas.search.engine.run_trials`, :func:`llmnas.samplers.build_sampler`,
:mod:`llmnas.search.storage`); what differs is the trial: the space is an NAS-Bench-201 cell space,
the cell network is built with the recipe's C and N (:mod:`llmnas.vision`), trained on the recipe's
training images (NAS-Bench-201's training half, or a stratified subset of it) and scored on the
validation half. Objectives: ``val_error`` (100 - validation accuracy), ``val_loss``, ``params``.

Pruning: with ``search.pruner`` (and ``train.eval_every_epochs``), each trial reports its first objective on
the scored validation images every ``eval_every_epochs`` epochs (the pruner's steps are epochs) and an Optuna
pruner (successive halving, Hyperband, median, percentile) stops the trials that fall behind; the samplers
learn from the trials that trained their whole budget.

Ground truth: with ``truth`` set, every trial records user attribute ``ground_truth``, the cell's
official index and 200-epoch test accuracies from the NAS-Bench-201 table. It is written for reporting
only: samplers read trial values and parameters, never user attributes, and the objective never reads it.

A cell isomorphic to one trained before in the study (same NAS-Bench-201 unique string) is not trained
again: the trial records ``reused_from`` and returns the earlier values. A cell whose earlier trial was
pruned replays that trial's intermediate values to the pruner, and is pruned again without training when
the pruner says so.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from optuna.trial import FrozenTrial, TrialState

import llmnas
from llmnas.errors import DataError, RecipeError
from llmnas.space import load_space
from llmnas.space.nb201 import NB201Cell, NB201Space
from llmnas.train import TrainingDiverged, TrainingPruned
from llmnas.train.ranks import TrainingFailed, describe
from llmnas.vision.data import ImageData, load_images, nb201_split
from llmnas.vision.recipe import VisionRecipe
from llmnas.vision.train import EpochReporter, VisionTrainResult, make_accelerator, stratified_subset, train_cell

GROUND_TRUTH_NOTE = ("NAS-Bench-201 200-epoch test accuracy (%) of this cell, read from the table for reporting "
                     "only; never used by the sampler or the objective")
MEASURED = ("val_acc", "val_error", "val_loss", "train_loss", "steps", "images", "train_seconds", "eval_seconds",
            "images_per_second", "params")


@dataclasses.dataclass
class VisionTask:
    """What every trial of a vision study trains on and is scored with."""

    data: ImageData
    train_idx: torch.Tensor
    valid_idx: torch.Tensor

    @classmethod
    def from_recipe(cls, recipe: VisionRecipe) -> VisionTask:
        try:
            data = load_images(recipe.data.source)
        except DataError as e:
            raise DataError(f"{recipe.source}: data.source: {e}") from None
        train_idx, valid_idx = nb201_split(data, recipe.data.split_seed)
        valid = stratified_subset(valid_idx, data.train_y[valid_idx], recipe.data.valid_images, recipe.data.valid_seed)
        return cls(data, train_idx, valid)

    def train(self, cell: NB201Cell, recipe: VisionRecipe, accelerator: Accelerator,
              report: EpochReporter | None = None) -> VisionTrainResult:
        _, result = train_cell(cell, self.data, self.train_idx, {"valid": self.valid_idx}, recipe.train, accelerator,
                               report)
        return result


def ground_truth(table: Any, cell: NB201Cell) -> dict[str, Any]:
    from llmnas.benchmarks.nb201 import DATASETS

    index = table.index_of(cell)
    return {"note": GROUND_TRUTH_NOTE, "index": index,
            **{f"{d}_test200": round(float(table.metric("test200", d)[index]), 4) for d in DATASETS}}


def setup_record(recipe: VisionRecipe, space: NB201Space, task: VisionTask) -> dict[str, Any]:
    info = space.describe()
    info.pop("size", None)
    return {"space": info, "data": {**dataclasses.asdict(recipe.data), "name": task.data.name,
                                    "train_images": len(task.data.train_x), "valid_scored": len(task.valid_idx)},
            "train": dataclasses.asdict(recipe.train), "objectives": list(recipe.search.objectives),
            "evaluator": {"kind": "scratch", "task": "vision"}}


def open_vision_study(recipe: VisionRecipe, space: NB201Space, task: VisionTask, worker: int = 0) -> optuna.Study:
    from llmnas.samplers import build_sampler
    from llmnas.search.engine import build_pruner
    from llmnas.search.storage import StudyLock, make_storage, removed_on_error

    search = recipe.search
    directions = ["minimize"] * len(search.objectives)
    try:
        sampler = build_sampler(search.sampler, space=space, directions=directions, seed=search.seed + worker,
                                options=dict(search.sampler_options))
    except RecipeError as e:
        raise RecipeError(f"{recipe.source}: search.sampler: {e}") from None
    pruner = build_pruner(recipe)  # type: ignore[arg-type]  # reads search.pruner and source only
    with removed_on_error(recipe.storage_url), StudyLock(recipe.storage_url):
        storage = make_storage(recipe.storage_url, search.heartbeat_seconds, search.grace_seconds)
        study = optuna.create_study(study_name=recipe.study, storage=storage, sampler=sampler, pruner=pruner,
                                    directions=directions, load_if_exists=True)
        record = json.loads(json.dumps(setup_record(recipe, space, task)))
        stored = study.user_attrs.get("setup")
        if stored is None:
            study.set_user_attr("setup", record)
            study.set_user_attr("recipe", json.loads(json.dumps(recipe.to_dict())))
            study.set_user_attr("versions", {"llmnas": llmnas.__version__, "python": platform.python_version(),
                                             "torch": torch.__version__, "optuna": optuna.__version__})
        elif stored != record:
            changed = [k for k in record if record[k] != stored.get(k)]
            raise RecipeError(
                f"study {recipe.study!r} in {recipe.storage_url} was started with a different {', '.join(changed)}; "
                "its trials would not be comparable: use another study name (--set study=NEW_NAME) or the original "
                "recipe to resume it"
            )
    return study


class VisionObjective:
    """Trains the cell a trial suggests and returns its objective values."""

    def __init__(self, recipe: VisionRecipe, space: NB201Space, task: VisionTask, accelerator: Accelerator,
                 table: Any = None) -> None:
        self.recipe, self.space, self.task, self.accelerator, self.table = recipe, space, task, accelerator, table

    def __call__(self, trial: optuna.Trial) -> list[float]:
        cell = self.space.suggest(trial)
        key = self.space.key(self.space.encode(cell))
        trial.set_user_attr("cell", cell.to_str())
        trial.set_user_attr("cell_key", key)
        trial.set_user_attr("evaluator", "scratch")
        if self.table is not None:
            trial.set_user_attr("ground_truth", ground_truth(self.table, cell))
        prior = self.previous(trial, key)
        if prior is not None and prior.state == TrialState.PRUNED:
            self.replay(trial, prior)  # raises TrialPruned when the pruner stops it at the same epoch again
            prior = None
        if prior is not None:
            trial.set_user_attr("reused_from", prior.user_attrs.get("reused_from", prior.number))
            for name in MEASURED:
                if name in prior.user_attrs:
                    trial.set_user_attr(name, prior.user_attrs[name])
            if prior.state == TrialState.FAIL:
                raise TrainingDiverged(0, float("nan"))
            return list(prior.values)
        first = self.recipe.search.objectives[0]

        def report(epoch: int, accuracy: float, loss: float) -> bool:
            trial.report(100.0 - accuracy if first == "val_error" else loss, epoch)
            return trial.should_prune()

        broadcast_object_list([{"cell": cell.to_str()}])  # followers train the same cell
        try:
            result = self.task.train(cell, self.recipe, self.accelerator, report)
        except TrainingPruned as e:
            trial.set_user_attr("pruned_at_step", e.step)
            raise optuna.TrialPruned(str(e)) from None
        except TrainingDiverged as e:
            trial.set_user_attr("diverged", True)
            trial.set_user_attr("fail_reason", str(e))
            raise
        except (TrainingFailed, torch.OutOfMemoryError) as e:
            trial.set_user_attr("fail_reason", str(e) if isinstance(e, TrainingFailed) else describe(e))
            raise
        measured = {"val_acc": result.accuracy["valid"], "val_error": 100.0 - result.accuracy["valid"],
                    "val_loss": result.loss["valid"], "train_loss": result.train_loss, "steps": result.steps,
                    "images": result.images, "train_seconds": result.train_seconds,
                    "eval_seconds": result.eval_seconds, "images_per_second": result.images_per_second,
                    "params": result.params}
        for name, value in measured.items():
            trial.set_user_attr(name, value)
        return [float(measured[o]) for o in self.recipe.search.objectives]

    def previous(self, trial: optuna.Trial, key: str) -> FrozenTrial | None:
        """The trial that trained the same cell before: completed or diverged first, else pruned."""
        found = None
        states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        for t in trial.study.get_trials(deepcopy=False, states=states):
            a = t.user_attrs
            if t.number == trial.number or a.get("cell_key") != key:
                continue
            if t.state == TrialState.COMPLETE or a.get("diverged"):
                return t
            if t.state == TrialState.PRUNED and "reused_from" not in a and found is None:
                found = t
        return found

    @staticmethod
    def replay(trial: optuna.Trial, prior: FrozenTrial) -> None:
        """Report ``prior``'s intermediate values in order; raise TrialPruned where the pruner stops it."""
        for step, value in sorted(prior.intermediate_values.items()):
            trial.report(value, step)
            if trial.should_prune():
                trial.set_user_attr("reused_from", prior.number)
                trial.set_user_attr("pruned_at_step", step)
                raise optuna.TrialPruned(f"pruned after epoch {step}, as the same cell's trial {prior.number}")


def follow(recipe: VisionRecipe, task: VisionTask, accelerator: Accelerator) -> None:
    """Non-main processes under ``accelerate launch``: train what the main process broadcasts."""
    while True:
        message = broadcast_object_list([None])[0]
        if message is None:
            return
        try:
            task.train(NB201Cell.from_str(message["cell"]), recipe, accelerator)
        except Exception as e:  # noqa: BLE001 - announced to the others; the main process records it
            print(f"process {accelerator.process_index}: the trial failed here: {describe(e)}", file=sys.stderr)


def top_table(study: optuna.Study, k: int, objective: str) -> str:
    """The best ``k`` distinct cells by the first objective, with the ground truth in its own marked columns."""
    from llmnas.search.confirm import candidates  # the cells llmnas confirm would retrain

    lines = [f"| rank | trial | {objective} | val_acc | params | images/s | cell | table CIFAR-10 200ep "
             "(ground truth, unused) |", "|---|---|---|---|---|---|---|---|"]
    for rank, t in enumerate(candidates(study, k), 1):
        a = t.user_attrs
        truth = a.get("ground_truth", {}).get("cifar10_test200")
        cell_md = "`" + str(a.get("cell")).replace("|", "\\|") + "`"  # a table cell: its '|' escaped
        lines.append(f"| {rank} | {t.number} | {t.values[0]:.4g} | {a.get('val_acc', float('nan')):.2f} | "
                     f"{a.get('params', 0):,} | {a.get('images_per_second', 0):.0f} | {cell_md} | "
                     f"{'' if truth is None else f'{truth:.2f}'} |")
    return "\n".join(lines)


def run_vision_search(recipe: VisionRecipe, *, n_trials: int | None = None, timeout: float | None = None,
                      workers: int | None = None, accelerator: Accelerator | None = None,
                      show_progress: bool = True, worker_index: int = 0) -> Any:
    """Run (or resume) a vision recipe's study; returns a :class:`~llmnas.search.engine.SearchSummary` on the
    main process, else ``None``."""
    from llmnas.search.engine import SearchSummary, run_trials
    from llmnas.search.storage import check_storage_url
    from llmnas.search.study import finished

    started = time.perf_counter()
    n_trials = n_trials or recipe.search.n_trials
    timeout = timeout if timeout is not None else recipe.search.timeout
    if (workers or recipe.search.workers) > 1:
        raise RecipeError(f"{recipe.source}: search.workers: a vision search runs one worker per command; start "
                          "the same command in several shells to share the study")
    check_storage_url(recipe.storage_url)
    accelerator = accelerator or make_accelerator(recipe.train)
    space = load_space(recipe.space)
    assert isinstance(space, NB201Space)
    table = None
    if recipe.truth is not None:
        from llmnas.benchmarks.nb201 import load_nb201

        if not Path(recipe.truth).is_dir():
            raise RecipeError(f"{recipe.source}: truth={recipe.truth!r}: no such folder (the NAS-Bench-201 tables, "
                              "e.g. ../shared/data/nasbench201; or null to record no ground truth)")
        table = load_nb201(recipe.truth)
    with accelerator.main_process_first():
        task = VisionTask.from_recipe(recipe)
    if not accelerator.is_main_process:
        follow(recipe, task, accelerator)
        return None
    study = open_vision_study(recipe, space, task, worker_index)
    before = len(finished(study))
    objective_name = recipe.search.objectives[0]
    if show_progress:
        t = recipe.train
        print(f"study {recipe.study!r} ({recipe.storage_url}): {before} finished trial(s), up to {n_trials}\n"
              f"  space: {space.name} ({space.size()} cells); sampler {recipe.search.sampler}; objectives "
              f"{', '.join(recipe.search.objectives)}\n  data: {task.data.name}, {len(task.train_idx)} training / "
              f"{len(task.valid_idx)} scored validation images; network C={t.C}, N={t.N}; per trial "
              f"{t.train_images or len(task.train_idx)} images x {t.epochs} epochs"
              + (f"; pruner {recipe.search.pruner.kind} on the validation every {t.eval_every_epochs} epoch(s)"
                 if recipe.search.pruner.kind != "none" else "")
              + (f"; ground truth from {recipe.truth} (recorded, never used)" if table is not None else ""))

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        if not show_progress:
            return
        a = trial.user_attrs
        value = f"{trial.values[0]:.3f}" if trial.values else trial.state.name
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"{trial.intermediate_values[step]:.3f}, pruned after epoch {step}"
        truth = a.get("ground_truth", {}).get("cifar10_test200")
        reused = f" (same cell as trial {a['reused_from']})" if "reused_from" in a else ""
        speed = f"  {a['train_seconds']:.0f}s {a.get('images_per_second', 0):.0f} img/s" if "train_seconds" in a else ""
        print(f"trial {trial.number}: {objective_name} {value}{reused}  {a.get('cell', '?')}{speed}"
              + (f"  [table {truth:.2f}]" if truth is not None else ""), flush=True)

    deadline = None if timeout is None else time.monotonic() + timeout
    objective = VisionObjective(recipe, space, task, accelerator, table)
    try:
        run_trials(study, objective, recipe.storage_url, n_trials, deadline, [progress])
    finally:
        broadcast_object_list([None])  # release the followers
    summary = SearchSummary(study, recipe.study_dir, recipe.storage_url, len(finished(study)) - before,
                            time.perf_counter() - started)
    recipe.study_dir.mkdir(parents=True, exist_ok=True)
    text = f"# {recipe.study}\n\n{top_table(study, recipe.search.top_k, objective_name)}\n"
    summary.summary_path = recipe.study_dir / "summary.md"
    summary.summary_path.write_text(text, encoding="utf-8")
    if show_progress:
        print("\n" + text)
        print(f"wrote {summary.summary_path}; {summary.new_trials} new trial(s) in {summary.seconds:.0f}s")
    return summary
