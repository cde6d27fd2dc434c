"""``llmnas search``: an Optuna study whose trials score sampled architectures.

A trial trains its architecture from scratch, or scores it with a zero-cost proxy or the weights of a
trained supernet: the evaluator the recipe names (:mod:`llmnas.search.evaluators`).

The study is the only search state: re-running the same recipe resumes it; several worker processes
(``search.workers`` or separate machines on one RDB storage) share it; optuna-dashboard shows it.
Under ``accelerate launch`` the main process drives the study and every process trains each trial
together (data parallel).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from optuna.trial import FrozenTrial, TrialState

import llmnas
from llmnas import interrupt
from llmnas.data import DataConfig, TokenData, prepare_data
from llmnas.errors import DataError, LlmnasError, RecipeError
from llmnas.hardware.objectives import HW_ATTRS, HardwareScorer, hardware_setup
from llmnas.proxies import PROXIES
from llmnas.recipe import Recipe
from llmnas.search.checkpoints import best_trained, remove_outside, trial_dir, weights_mb
from llmnas.search.evaluators import (
    RESULT_ATTRS,
    Evaluator,
    ProxyScorer,
    extra_proxies,
    make_evaluator,
    objective_values,
)
from llmnas.search.progress import Progress, print_header, write_summary
from llmnas.search.storage import (
    StudyLock,
    check_storage_reachable,
    check_storage_url,
    fail_lost_trials,
    make_storage,
    removed_on_error,
    retry_trial,
    shown,
    worker_id,
)
from llmnas.search.study import arch_attrs, counted, finished
from llmnas.search.workers import WorkerPool
from llmnas.space import TransformerSpace, load_space
from llmnas.space.arch import Architecture
from llmnas.train import TrainingDiverged, make_accelerator
from llmnas.train.ranks import TrainingFailed, describe

#: What a trial measured (user attributes, also copied to a trial that reuses its result).
REUSED_ATTRS = (*RESULT_ATTRS, *PROXIES, "proxy_seconds", "windows", "history", *HW_ATTRS, "inherited_val_loss",
                "inherited_bits_per_byte", "inherited_bits_per_char")
#: The evaluator of a study whose set-up record predates evaluators: every trial was trained.
SCRATCH_SETUP = {"kind": "scratch"}


class ReusedFailure(LlmnasError):
    """The architecture failed before in this study; it is not trained again."""


class SurplusTrial(LlmnasError):
    """The trial was started beyond ``n_trials`` while a database restart had freed the study lock."""


@dataclass
class SearchSummary:
    """What one ``run_search`` call leaves behind."""

    study: optuna.Study
    study_dir: Path
    storage_url: str
    new_trials: int
    seconds: float
    summary_path: Path | None = None
    plots: list[Path] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------- set-up
def recipe_data(recipe: Recipe, cfg: DataConfig | None = None) -> TokenData:
    """``prepare_data`` of the recipe's data section (or ``cfg``); a data error names the recipe file."""
    try:
        return prepare_data(cfg or recipe.data)
    except DataError as e:
        raise DataError(f"{recipe.source}: data: {e}") from None


def prepare_space(recipe: Recipe, data: TokenData) -> TransformerSpace:
    """The recipe's space for this tokenizer and block size, with the recipe's extra constraints (checked
    when the recipe was read).

    Raises:
        RecipeError: the space is not a transformer space.
        SpaceError: no architecture of the space meets the constraints (nothing is searched).
    """
    space = load_space(recipe.space)
    if not isinstance(space, TransformerSpace):
        raise RecipeError(f"{recipe.source}: space: {recipe.space!r} is not a transformer space")
    space = space.with_vocab_size(data.vocab_size).with_max_seq_len(recipe.data.block_size)
    if recipe.search.constraints:
        space = space.with_constraints(dataclasses.replace(space.constraints, **recipe.search.constraints))
    space.check_feasible()
    return space


def build_pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    cfg = recipe.search.pruner
    if cfg.kind == "none":  # options of a pruner switched off with --set search.pruner.kind=none mean nothing
        return optuna.pruners.NopPruner()
    classes = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    try:
        return classes[cfg.kind](**cfg.options)
    except TypeError as e:
        raise RecipeError(f"{recipe.source}: search.pruner.options: {e}") from None


def setup_record(recipe: Recipe, space: TransformerSpace, data: TokenData,
                 evaluator: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must not change when a study is resumed (otherwise its trials are not comparable).

    Args:
        evaluator: the evaluator's :meth:`~llmnas.search.evaluators.Evaluator.setup` (its kind, and the proxy
            or the supernet checkpoint's id); default: training from scratch.
    """
    info = space.describe()
    info.pop("size", None)
    return {
        "space": info,
        "data": data.meta.cache_key,
        "train": dataclasses.asdict(recipe.train),
        "objectives": list(recipe.search.objectives),
        "evaluator": evaluator or SCRATCH_SETUP,
        **({"hardware": hardware_setup(recipe.hardware)} if recipe.hardware is not None else {}),
    }


def open_study(recipe: Recipe, space: TransformerSpace, data: TokenData, worker: int = 0,
               evaluator: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study, or load it to resume after checking that the set-up (with the ``evaluator``'s
    set-up record, default training from scratch) has not changed."""
    from llmnas.samplers import build_sampler

    search = recipe.search
    if search.constraint_mode == "sampler" and search.sampler == "random":
        raise RecipeError(
            f"{recipe.source}: search.constraint_mode: 'sampler' needs a sampler that reads constraints, not "
            "'random'; use constraint_mode: reject"
        )
    try:
        sampler = build_sampler(
            search.sampler,
            space=space,
            directions=search.directions,
            seed=search.seed + worker,
            options=dict(search.sampler_options),
        )
    except RecipeError as e:
        raise RecipeError(f"{recipe.source}: search.sampler: {e}") from None
    pruner = build_pruner(recipe)
    # Two processes creating one new SQLite study at once race on its tables: they take turns.
    with removed_on_error(recipe.storage_url), StudyLock(recipe.storage_url):
        storage = make_storage(recipe.storage_url, search.heartbeat_seconds, search.grace_seconds)
        study = optuna.create_study(study_name=recipe.study, storage=storage, sampler=sampler, pruner=pruner,
                                    directions=search.directions, load_if_exists=True)
        _check_setup(recipe, space, data, study, evaluator)
    return study


def _check_setup(recipe: Recipe, space: TransformerSpace, data: TokenData, study: optuna.Study,
                 evaluator: dict[str, Any] | None) -> None:
    search = recipe.search
    wanted = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
              for d in search.directions]  # decode_tokens_per_s is maximised
    if study.directions != wanted:
        raise RecipeError(
            f"study {recipe.study!r} in {shown(recipe.storage_url)} has {len(study.directions)} objective(s); the "
            f"recipe asks for {list(search.objectives)}: use another study name (--set study=NEW_NAME)"
        )
    record = setup_record(recipe, space, data, evaluator)
    stored = study.user_attrs.get("setup")
    if stored is not None and "evaluator" not in stored:  # started before evaluators: trained from scratch
        stored = {**stored, "evaluator": SCRATCH_SETUP}
    if stored is None:
        study.set_user_attr("setup", record)
        study.set_user_attr("recipe", recipe.to_dict())
        study.set_user_attr("data", data.meta.to_dict())
        study.set_user_attr(
            "versions",
            {"llmnas": llmnas.__version__, "python": platform.python_version(), "torch": torch.__version__,
             "optuna": optuna.__version__},
        )
    elif stored != json.loads(json.dumps(record)):
        changed = [k for k in record if json.loads(json.dumps(record[k])) != stored.get(k)]
        raise RecipeError(
            f"study {recipe.study!r} in {shown(recipe.storage_url)} was started with a different {', '.join(changed)}; "
            "its trials would not be comparable: use another study name (--set study=NEW_NAME) or the original "
            "recipe to resume it"
        )


# ---------------------------------------------------------------------- the objective
#: Failures that end one trial and let the study go on (anything else stops the search).
TRIAL_FAILURES = (TrainingDiverged, ReusedFailure, SurplusTrial, TrainingFailed, torch.OutOfMemoryError)


class Objective:
    """Scores the architecture a trial suggests with the recipe's evaluator and returns the objective values."""

    def __init__(self, recipe: Recipe, space: TransformerSpace, data: TokenData, accelerator: Accelerator,
                 evaluator: Evaluator | None = None, hardware: HardwareScorer | None = None) -> None:
        self.recipe, self.space, self.data, self.accelerator = recipe, space, data, accelerator
        self.evaluator = evaluator or make_evaluator(recipe, data, accelerator)
        if hardware is None and recipe.hardware is not None:
            hardware = HardwareScorer(recipe.hardware, space, recipe.source)
        self.hardware = hardware  # prefill_ms, decode_tokens_per_s, ...: measured or predicted, and their caps
        self.proxies = ProxyScorer(recipe, data)  # proxies named as objectives beside the evaluator's values
        self.study_dir = recipe.study_dir
        #: Called once the trial's architecture is recorded (:func:`run_trials` releases the study lock here).
        self.suggested: Callable[[optuna.Trial], None] = lambda trial: None

    def __call__(self, trial: optuna.Trial) -> list[float] | float:
        arch = self.space.suggest(trial)
        for key, value in {**arch_attrs(arch), **self.evaluator.trial_attrs()}.items():
            trial.set_user_attr(key, value)
        constraints = self.space.constraints
        if self.recipe.search.constraint_mode == "sampler":
            for name, value in constraints.optuna_values(arch).items():  # samplers read trial.constraints
                trial.set_constraint(name, value)
        else:
            violations = constraints.violations(arch)
            if violations:
                trial.set_user_attr("rejected", violations)
                self.suggested(trial)
                raise optuna.TrialPruned("rejected before training: " + "; ".join(violations))
        self.suggested(trial)
        if self.hardware is not None:
            self.check_hardware(trial, arch)
        prior = self.previous(trial, arch.id)
        if prior is not None:
            return self.reuse(trial, prior)
        return self.score(trial, arch)

    def check_hardware(self, trial: optuna.Trial, arch: Architecture) -> None:
        """Record the architecture's hardware values, and apply the recipe's caps on them as the space's own
        limits are applied (rejected before training, or Optuna constraints for the sampler)."""
        assert self.hardware is not None
        values = self.hardware.attrs(arch)
        for key, value in values.items():
            trial.set_user_attr(key, value)
        if self.recipe.search.constraint_mode == "sampler":
            for name, value in self.hardware.optuna_values(values).items():
                trial.set_constraint(name, value)
            return
        violations = self.hardware.violations(values)
        if violations:
            trial.set_user_attr("rejected", violations)
            raise optuna.TrialPruned("rejected before training: " + "; ".join(violations))

    def previous(self, trial: optuna.Trial, arch_id: str) -> FrozenTrial | None:
        """The first trial of this study whose outcome says something about the same architecture:
        completed, pruned, or diverged. A failure for any other reason (its worker was lost, it ran out of
        memory next to another job, another process raised) says nothing about it: it is trained again.

        An earlier trial of the same architecture still running (another worker) is waited for, so that no
        architecture is trained twice at once; a lost one is failed meanwhile (heartbeats, or its process
        gone) and its architecture is then trained here.
        """
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
        while True:
            running = None
            for t in trial.study.get_trials(deepcopy=False, states=states):
                a = t.user_attrs
                if t.number == trial.number or a.get("arch_id") != arch_id or "rejected" in a:
                    continue
                if t.state == TrialState.RUNNING:
                    running = running or (t if t.number < trial.number else None)
                    continue
                if t.state == TrialState.FAIL and not a.get("diverged"):
                    continue
                return t
            if running is None:
                return None
            if trial.user_attrs.get("waited_for") != running.number:
                trial.set_user_attr("waited_for", running.number)
            interrupt.check()
            time.sleep(1.0)
            with StudyLock(self.recipe.storage_url):
                fail_lost_trials(trial.study)
                optuna.storages.fail_stale_trials(trial.study)

    def reuse(self, trial: optuna.Trial, prior: FrozenTrial) -> list[float]:
        origin = prior.user_attrs.get("reused_from", prior.number)
        trial.set_user_attr("reused_from", origin)
        for key in REUSED_ATTRS:
            if key in prior.user_attrs:
                trial.set_user_attr(key, prior.user_attrs[key])
        if prior.state == TrialState.COMPLETE:
            return list(prior.values)
        if prior.state == TrialState.PRUNED:
            if len(self.recipe.search.directions) == 1:
                for step, value in prior.intermediate_values.items():
                    trial.report(value, step)
            raise optuna.TrialPruned(f"same architecture as trial {origin}, which was pruned")
        reason = prior.user_attrs.get("fail_reason", "failed")
        trial.set_user_attr("diverged", True)
        trial.set_user_attr("fail_reason", f"same architecture as trial {origin}: {reason}")
        raise ReusedFailure(f"same architecture as trial {origin}, which failed ({reason})")

    def score(self, trial: optuna.Trial, arch: Architecture) -> list[float]:
        """Evaluate ``arch`` (and the proxies the objectives name beside it), record what was measured, keep
        trained weights the recipe keeps, and return the objective values."""
        objectives = self.recipe.search.objectives
        evaluation = self.evaluator.evaluate(trial, arch)
        measured = {**evaluation.measured, **self.proxies.scores(extra_proxies(objectives, evaluation.measured), arch)}
        for key, value in measured.items():
            trial.set_user_attr(key, value)
        hardware = self.hardware.values(arch) if self.hardware is not None else {}  # recorded by check_hardware
        values = objective_values(objectives, {**arch_attrs(arch), **measured, **hardware})
        if evaluation.model is not None:
            self.keep_weights(trial, evaluation.model, values[0])
        return values

    def keep_weights(self, trial: optuna.Trial, model: torch.nn.Module, value: float) -> None:
        """Write the trial's checkpoint if the recipe keeps it (every trial, or the best few that are small
        enough), and remove the checkpoints of trials that are no longer among the best."""
        from llmnas.export import save_checkpoint

        search = self.recipe.search
        if search.save_checkpoints:
            kept = None
        elif search.keep_checkpoints and weights_mb(model) <= search.checkpoint_max_mb:
            kept = best_trained(trial.study, search.keep_checkpoints, current=(trial.number, value))
        else:
            return
        if kept is None or trial.number in kept:
            save_checkpoint(model, trial_dir(self.study_dir, trial.number), tokenizer=self.data.tokenizer)
        if kept is not None:
            remove_outside(trial.study, self.study_dir, kept)


def follow(evaluator: Evaluator, accelerator: Accelerator) -> None:
    """Non-main processes under ``accelerate launch``: evaluate what the main process broadcasts.

    Every process of a trial raises together (:mod:`llmnas.train.ranks`); the main process records the
    outcome, and the others wait for the next architecture.
    """
    while True:
        message = broadcast_object_list([None])[0]
        if message is None:
            return
        arch = Architecture.from_json(message["arch"])
        try:
            evaluator.follow(arch)
        except Exception as e:  # noqa: BLE001 - this process's own failure, already announced to the others
            print(f"process {accelerator.process_index}: the trial failed here: {describe(e)}", file=sys.stderr)


# ---------------------------------------------------------------------- running trials
def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], Any], storage_url: str, n_trials: int,
               deadline: float | None, callbacks: list[Callable[[optuna.Study, FrozenTrial], None]]) -> None:
    """Start trials until the study holds ``n_trials`` counted trials (none queued) or ``deadline`` passes.

    Every process sharing the study does the same, one trial at a time, and they take turns (the study
    lock) from counting the trials to recording the next one's architecture, so that ``n_trials`` is exact
    and every sampler sees the architectures of all trials started before (none proposes a running one). Before
    counting, trials whose worker is gone are failed and queued again (their retry takes their place).
    """
    lock = StudyLock(storage_url)

    def end_turn(trial: optuna.Trial) -> None:
        """The trial exists, counts and holds its architecture, which the next process's sampler then sees:
        the next process may start its own."""
        if lock.release():
            return
        # A restart of the database server freed the lock during this turn: another process may have counted
        # the trials without this one. This one gives way if the others make n_trials without it.
        with lock:
            if len([t for t in counted(study) if t.number != trial.number]) >= n_trials:
                reason = "started beyond n_trials while a database restart had freed the study lock"
                trial.set_user_attr("surplus", True)
                trial.set_user_attr("fail_reason", reason)
                raise SurplusTrial(reason)

    if isinstance(objective, Objective):
        objective.suggested = end_turn

    def start(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", worker_id())
        if not isinstance(objective, Objective):
            end_turn(trial)
        return objective(trial)

    while deadline is None or time.monotonic() < deadline:
        interrupt.check()
        with lock:
            fail_lost_trials(study)
            optuna.storages.fail_stale_trials(study)
            trials = counted(study)
            if len(trials) >= n_trials and not any(t.state == TrialState.WAITING for t in trials):
                return
            try:
                study.optimize(start, n_trials=1, catch=TRIAL_FAILURES, callbacks=callbacks, gc_after_trial=False)
            except KeyboardInterrupt:
                requeue_interrupted(study)
                raise
            except optuna.exceptions.UpdateFinishedTrialError as e:
                # Another worker failed this live trial as lost (its heartbeats were late by more than the grace
                # period) and queued it again: the retry stands in for it.
                print(f"llmnas: {e}; it was failed as lost while it ran here (its heartbeats were late: raise "
                      "search.grace_seconds); its retry stands in for it", file=sys.stderr)


def requeue_interrupted(study: optuna.Study) -> None:
    """After Ctrl-C: Optuna has failed the trial this process was running; it says nothing about the
    architecture, so it is queued again (the next run trains it first) with the reason on the study."""
    me = worker_id()
    for t in reversed(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))):
        if t.user_attrs.get("worker") == me and "fail_reason" not in t.user_attrs:
            study.set_user_attr(f"fail_reason_{t.number}", "interrupted (Ctrl-C)")
            retry_trial(study, t)
            return


# ---------------------------------------------------------------------- entry points
def run_search(
    recipe: Recipe,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int | None = None,
    accelerator: Accelerator | None = None,
    show_progress: bool = True,
    worker_index: int = 0,
) -> SearchSummary | None:
    """Run (or resume) the recipe's study until it holds ``n_trials`` finished trials or ``timeout`` passes.

    Returns the summary on the main process of worker 0, else ``None``.
    """
    if getattr(recipe, "kind", None) == "vision":  # an image cell space: llmnas.search.vision trains each cell
        from llmnas.search.vision import run_vision_search

        return run_vision_search(recipe, n_trials=n_trials, timeout=timeout, workers=workers,  # type: ignore[arg-type]
                                 accelerator=accelerator, show_progress=show_progress, worker_index=worker_index)
    started = time.perf_counter()
    n_trials = n_trials or recipe.search.n_trials
    timeout = timeout if timeout is not None else recipe.search.timeout
    workers = workers or recipe.search.workers
    if timeout is not None and not 0 < timeout < float("inf"):
        raise RecipeError(f"timeout={timeout!r}: must be a positive number of seconds")
    check_storage_url(recipe.storage_url)  # before the data is read: a wrong URL fails at once
    check_storage_reachable(recipe.storage_url)
    accelerator = accelerator or make_accelerator(recipe.train)
    if workers > 1 and accelerator.num_processes > 1:
        raise RecipeError("use either --workers K or accelerate launch with several processes, not both")
    with accelerator.main_process_first():
        data = recipe_data(recipe)
    space = prepare_space(recipe, data)
    hardware = HardwareScorer(recipe.hardware, space, recipe.source) if recipe.hardware is not None else None
    if hardware is not None and accelerator.is_main_process:
        hardware.check_feasible(space)  # a cap no architecture meets: one error before any trial
    evaluator = make_evaluator(recipe, data, accelerator)
    if not accelerator.is_main_process:
        follow(evaluator, accelerator)
        return None
    study = open_study(recipe, space, data, worker=worker_index, evaluator=evaluator.setup())
    before = len(finished(study))
    main = worker_index == 0
    if main and show_progress:
        print_header(recipe, space, data, study, n_trials, workers, evaluator.trial_attrs())
    progress = Progress(study, n_trials, enabled=show_progress and main, objective=recipe.search.objectives[0])
    deadline = None if timeout is None else time.monotonic() + timeout
    objective = Objective(recipe, space, data, accelerator, evaluator, hardware)
    pool = WorkerPool(recipe, n_trials, timeout, workers) if main and workers > 1 else None

    def watch(study: optuna.Study, trial: FrozenTrial) -> None:
        for line in pool.deaths() if pool else []:
            progress.note(line) if show_progress else print(line, file=sys.stderr)

    ok = False
    try:
        while True:
            run_trials(study, objective, recipe.storage_url, n_trials, deadline, [progress, watch])
            # A worker that died after this process's last turn left its trial running: one more round
            # fails it and trains its retry here.
            deaths = pool.join() if pool else []
            for line in deaths:
                progress.note(line) if show_progress else print(line, file=sys.stderr)
            if not deaths:
                break
        ok = True
    finally:
        broadcast_object_list([None])  # release the followers
        progress.close()
        if pool is not None and not ok:
            pool.terminate()
    if not main:
        return None
    new = len(finished(study)) - before
    summary = SearchSummary(study, recipe.study_dir, recipe.storage_url, new, time.perf_counter() - started)
    if before >= n_trials and show_progress:
        print(f"study {recipe.study!r} already holds {before} finished trials (n_trials={n_trials}); "
              "raise --n-trials to search further")
    write_summary(recipe, study, summary, show_progress)
    return summary
