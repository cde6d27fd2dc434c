"""``llmnas search``: an Optuna study whose trials train sampled architectures from scratch.

The study is the only search state: re-running the same recipe resumes it; several worker processes
(``search.workers`` or separate machines on one RDB storage) share it; optuna-dashboard shows it.
Under ``accelerate launch`` the main process drives the study and every process trains each trial
together (data parallel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

import llmnas
from llmnas.data import TokenData, prepare_data
from llmnas.errors import LlmnasError, RecipeError
from llmnas.recipe import Recipe
from llmnas.search.report import pareto_plots, pareto_table, state_counts, top_table
from llmnas.search.study import arch_attrs, fail_reason, finished, make_storage
from llmnas.space import Constraints, TransformerSpace, load_space
from llmnas.space.arch import Architecture, param_count_str
from llmnas.train import TrainingDiverged, TrainingPruned, make_accelerator, train

optuna.logging.set_verbosity(optuna.logging.WARNING)


#: What a trained trial measured (user attributes, also copied to a trial that reuses its result).
RESULT_ATTRS = ("val_loss", "bits_per_byte", "bits_per_char", "tokens", "steps", "train_seconds", "eval_seconds",
                "tokens_per_second")


class ReusedFailure(LlmnasError):
    """The architecture failed before in this study; it is not trained again."""


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
def prepare_space(recipe: Recipe, data: TokenData) -> TransformerSpace:
    """The recipe's space for this tokenizer and block size, with the recipe's extra constraints."""
    space = load_space(recipe.space)
    if not isinstance(space, TransformerSpace):
        raise RecipeError(f"{recipe.source}: space: {recipe.space!r} is not a transformer space")
    space = space.with_vocab_size(data.vocab_size).with_max_seq_len(recipe.data.block_size)
    if recipe.search.constraints:
        allowed = [f.name for f in dataclasses.fields(Constraints)]
        for key, value in recipe.search.constraints.items():
            if key not in allowed:
                raise RecipeError(f"{recipe.source}: search.constraints.{key}: unknown (allowed: {', '.join(allowed)})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"{recipe.source}: search.constraints.{key}: {value!r} must be a positive integer")
        space = space.with_constraints(dataclasses.replace(space.constraints, **recipe.search.constraints))
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


def setup_record(recipe: Recipe, space: TransformerSpace, data: TokenData) -> dict[str, Any]:
    """What must not change when a study is resumed (otherwise its trials are not comparable)."""
    info = space.describe()
    info.pop("size", None)
    return {
        "space": info,
        "data": data.meta.cache_key,
        "train": dataclasses.asdict(recipe.train),
        "objectives": list(recipe.search.objectives),
    }


def open_study(recipe: Recipe, space: TransformerSpace, data: TokenData, worker: int = 0) -> optuna.Study:
    """Create the study, or load it to resume after checking that the set-up has not changed."""
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
    study = optuna.create_study(
        study_name=recipe.study,
        storage=make_storage(recipe.storage_url, search.heartbeat_seconds, search.grace_seconds),
        sampler=sampler,
        pruner=build_pruner(recipe),
        directions=search.directions,
        load_if_exists=True,
    )
    wanted = [optuna.study.StudyDirection.MINIMIZE] * len(search.directions)
    if study.directions != wanted:
        raise RecipeError(
            f"study {recipe.study!r} in {recipe.storage_url} has {len(study.directions)} objective(s); the recipe asks "
            f"for {list(search.objectives)}: use another study name (--set study=NEW_NAME)"
        )
    record = setup_record(recipe, space, data)
    stored = study.user_attrs.get("setup")
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
            f"study {recipe.study!r} in {recipe.storage_url} was started with a different {', '.join(changed)}; "
            "its trials would not be comparable: use another study name (--set study=NEW_NAME) or the original "
            "recipe to resume it"
        )
    return study


# ---------------------------------------------------------------------- the objective
class Objective:
    """Trains the architecture a trial suggests and returns the recipe's objective values."""

    def __init__(self, recipe: Recipe, space: TransformerSpace, data: TokenData, accelerator: Accelerator) -> None:
        self.recipe, self.space, self.data, self.accelerator = recipe, space, data, accelerator
        self.study_dir = recipe.study_dir

    def __call__(self, trial: optuna.Trial) -> list[float] | float:
        arch = self.space.suggest(trial)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        for key, value in arch_attrs(arch).items():
            trial.set_user_attr(key, value)
        constraints = self.space.constraints
        if self.recipe.search.constraint_mode == "sampler":
            for name, value in constraints.optuna_values(arch).items():  # samplers read trial.constraints
                trial.set_constraint(name, value)
        else:
            violations = constraints.violations(arch)
            if violations:
                trial.set_user_attr("rejected", violations)
                raise optuna.TrialPruned("rejected before training: " + "; ".join(violations))
        prior = self.previous(trial, arch.id)
        if prior is not None:
            return self.reuse(trial, prior)
        return self.train(trial, arch)

    def previous(self, trial: optuna.Trial, arch_id: str) -> FrozenTrial | None:
        """The first finished trial of this study that trained the same architecture."""
        for t in finished(trial.study):
            if t.user_attrs.get("arch_id") == arch_id and "rejected" not in t.user_attrs:
                return t
        return None

    def reuse(self, trial: optuna.Trial, prior: FrozenTrial) -> list[float]:
        origin = prior.user_attrs.get("reused_from", prior.number)
        trial.set_user_attr("reused_from", origin)
        for key in (*RESULT_ATTRS, "history"):
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
        trial.set_user_attr("fail_reason", f"same architecture as trial {origin}: {reason}")
        raise ReusedFailure(f"same architecture as trial {origin}, which failed ({reason})")

    def train(self, trial: optuna.Trial, arch: Architecture) -> list[float]:
        single = len(self.recipe.search.directions) == 1

        def report(step: int, value: float) -> bool:
            if not single:
                return False
            trial.report(value, step)
            return trial.should_prune()

        broadcast_object_list([{"arch": arch.to_json()}])  # followers train the same architecture
        try:
            model, result = train(arch, self.data, self.recipe.train, self.accelerator, report=report)
        except TrainingDiverged as e:
            trial.set_user_attr("fail_reason", str(e))
            raise
        except TrainingPruned as e:
            trial.set_user_attr("pruned_at_step", e.step)
            raise optuna.TrialPruned(str(e)) from None
        measured = {key: getattr(result, key) for key in RESULT_ATTRS}
        for key, value in measured.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("history", result.history)
        if self.recipe.search.save_checkpoints:
            from llmnas.export import save_checkpoint

            save_checkpoint(model, self.study_dir / "trials" / str(trial.number), tokenizer=self.data.tokenizer)
        values = {**arch_attrs(arch), **measured}
        return [float(values[o]) for o in self.recipe.search.objectives]


def follow(recipe: Recipe, data: TokenData, accelerator: Accelerator) -> None:
    """Non-main processes under ``accelerate launch``: train what the main process broadcasts."""
    while True:
        message = broadcast_object_list([None])[0]
        if message is None:
            return
        arch = Architecture.from_json(message["arch"])
        with contextlib.suppress(TrainingDiverged, TrainingPruned):  # the main process records the outcome
            train(arch, data, recipe.train, accelerator, report=lambda step, value: False)


# ---------------------------------------------------------------------- progress
class Progress:
    """A progress bar over the study's trials with the best validation loss so far."""

    def __init__(self, study: optuna.Study, total: int, enabled: bool) -> None:
        done = len(finished(study))
        # In a terminal a live bar; in a log file only the one line per trial.
        self.bar = tqdm(total=total, initial=min(done, total), desc=study.study_name, unit="trial",
                        disable=not (enabled and sys.stdout.isatty()), dynamic_ncols=True, file=sys.stdout)
        self.enabled = enabled
        self._best(study)

    def _best(self, study: optuna.Study) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if done:
            best = min(done, key=lambda t: t.values[0])
            self.bar.set_postfix_str(f"best {best.values[0]:.4f} (trial {best.number})")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.enabled:
            return
        a = trial.user_attrs
        what = f"{a.get('arch_id', '?')} {param_count_str(a.get('params', 0)):>6}"
        if trial.state == TrialState.COMPLETE:
            note = f" (reused trial {a['reused_from']})" if "reused_from" in a else ""
            outcome = f"val_loss {trial.values[0]:.4f} in {a.get('train_seconds', 0):.0f}s{note}"
        elif "rejected" in a:
            outcome = "rejected: " + "; ".join(a["rejected"])
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned at step {a.get('pruned_at_step', '?')}"
        else:
            outcome = f"failed: {fail_reason(study, trial) or 'see the log'}"
        tqdm.write(f"trial {trial.number:>4}: {what}  {outcome}", file=sys.stdout)
        self.bar.update(1)
        self._best(study)

    def close(self) -> None:
        self.bar.close()


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
    started = time.perf_counter()
    n_trials = n_trials or recipe.search.n_trials
    timeout = timeout if timeout is not None else recipe.search.timeout
    workers = workers or recipe.search.workers
    accelerator = accelerator or make_accelerator(recipe.train)
    if workers > 1 and accelerator.num_processes > 1:
        raise RecipeError("use either --workers K or accelerate launch with several processes, not both")
    with accelerator.main_process_first():
        data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    if not accelerator.is_main_process:
        follow(recipe, data, accelerator)
        return None
    study = open_study(recipe, space, data, worker=worker_index)
    optuna.storages.fail_stale_trials(study)
    before = len(finished(study))
    main = worker_index == 0
    if main and show_progress:
        _print_header(recipe, space, data, study, n_trials, workers)
    children = _spawn_workers(recipe, n_trials, timeout, workers) if main and workers > 1 else []
    progress = Progress(study, n_trials, enabled=show_progress and main)
    remaining = n_trials - before
    try:
        if remaining > 0:
            study.optimize(
                Objective(recipe, space, data, accelerator),
                n_trials=remaining,
                timeout=timeout,
                catch=(TrainingDiverged, ReusedFailure, torch.OutOfMemoryError),
                callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=None), progress],
                gc_after_trial=False,
            )
    finally:
        broadcast_object_list([None])  # release the followers
        progress.close()
        for child in children:
            child.join()
    if not main:
        return None
    new = len(finished(study)) - before
    summary = SearchSummary(study, recipe.study_dir, recipe.storage_url, new, time.perf_counter() - started)
    if remaining <= 0 and show_progress:
        print(f"study {recipe.study!r} already holds {before} finished trials (n_trials={n_trials}); "
              "raise --n-trials to search further")
    _write_summary(recipe, study, summary, show_progress)
    return summary


def _print_header(recipe: Recipe, space: TransformerSpace, data: TokenData, study: optuna.Study, n_trials: int,
                  workers: int) -> None:
    m = data.meta
    budget = {k: v for k, v in dataclasses.asdict(recipe.train).items() if k.startswith("max_") and v is not None}
    print(f"study {recipe.study!r}: {len(finished(study))} of {n_trials} trials done; storage {recipe.storage_url}")
    print(f"  data: {m.source}; tokenizer {m.tokenizer} ({m.vocab_size} ids); "
          f"{m.n_train_tokens:,} train / {m.n_val_tokens:,} validation tokens")
    print(f"  space: {space.name} ({space.size():.3g} architectures, {len(space.choices())} decisions); "
          f"sampler {recipe.search.sampler}; objectives {', '.join(recipe.search.objectives)}; "
          f"per-trial budget {budget}; workers {workers}")
    print(f"  watch it: optuna-dashboard {recipe.storage_url}")


def _write_summary(recipe: Recipe, study: optuna.Study, summary: SearchSummary, show: bool) -> None:
    names = list(recipe.search.objectives)
    parts = [f"# Study {study.study_name}", "", f"Trials: {state_counts(study)}.", "",
             f"Top {recipe.search.top_k} by {names[0]}:", "", top_table(study, recipe.search.top_k)]
    if len(names) > 1 and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        summary.plots = pareto_plots(study, names, summary.study_dir)
        parts += ["", "Pareto front:", "", pareto_table(study, names)]
    summary.study_dir.mkdir(parents=True, exist_ok=True)
    summary.summary_path = summary.study_dir / "summary.md"
    summary.summary_path.write_text("\n".join(parts) + "\n")
    if show:
        print("\n".join(parts[2:]))
        for p in summary.plots:
            print(f"wrote {p}")
        print(f"wrote {summary.summary_path}; {summary.new_trials} new trial(s) in {summary.seconds:.0f}s")
        print(f"export the best: llmnas export {summary.study_dir} --trial best --out {summary.study_dir}/hf")


# ---------------------------------------------------------------------- worker processes
def _worker_main(recipe: Recipe, n_trials: int, timeout: float | None, index: int, threads: int) -> None:
    torch.set_num_threads(threads)
    run_search(recipe, n_trials=n_trials, timeout=timeout, workers=1, show_progress=False, worker_index=index)


def _spawn_workers(recipe: Recipe, n_trials: int, timeout: float | None, workers: int) -> list[mp.Process]:
    """Start ``workers - 1`` more processes on the same study (one GPU each where there are several)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    ctx = mp.get_context("spawn")
    children = []
    n_gpus = torch.cuda.device_count()
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    for index in range(1, workers):
        if n_gpus > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index % n_gpus)
        child = ctx.Process(target=_worker_main, args=(recipe, n_trials, timeout, index, threads), daemon=False)
        child.start()
        children.append(child)
    if n_gpus > 1:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return children

