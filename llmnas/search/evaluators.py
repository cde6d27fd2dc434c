"""How a trial scores the architecture it suggests: the evaluator that ``search.evaluator`` names.

- :class:`ScratchEvaluator` (``scratch``): trains it from scratch on the per-trial budget; intermediate
  validation losses go to the pruner, and the trained model comes back so the best weights can be kept.
- :class:`ProxyEvaluator` (``proxy``): a zero-cost proxy of it at initialisation (:mod:`llmnas.proxies`);
  nothing is trained or kept.
- :class:`SupernetEvaluator` (``supernet``): its validation loss with the weights it inherits from a
  trained supernet checkpoint (:mod:`llmnas.supernet`), optionally calibrated against training from scratch
  (``search.calibration``); nothing is trained or kept.

Samplers see none of this: an evaluator only changes how a trial's values are measured. Under
``accelerate launch`` the main process's evaluator broadcasts each architecture it trains or evaluates,
and the other processes' evaluators take their share of the work in :meth:`Evaluator.follow`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from llmnas.data import TokenData
from llmnas.errors import ArchitectureError, LlmnasError, RecipeError
from llmnas.proxies import Batch, data_batch, get_proxy, objective_value, one_thread, proxy_of_objective
from llmnas.recipe import Recipe
from llmnas.space.arch import Architecture
from llmnas.train import TrainingDiverged, TrainingPruned, train
from llmnas.train.ranks import TrainingFailed, describe

#: What a trained (or supernet-evaluated) trial measured, as user attributes.
RESULT_ATTRS = ("val_loss", "bits_per_byte", "bits_per_char", "tokens", "steps", "train_seconds", "eval_seconds",
                "tokens_per_second")


@dataclass
class Evaluation:
    """What an evaluator measured for one architecture.

    Attributes:
        measured: values recorded as the trial's user attributes; objectives are read from them (with the
            architecture's own counts).
        model: weights that may be kept as the trial's checkpoint (a model trained from scratch), else ``None``.
    """

    measured: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = None


class Evaluator(Protocol):
    """Scores architectures for the trials of one study."""

    kind: str
    """``scratch``, ``proxy`` or ``supernet`` (the recipe's ``search.evaluator``)."""

    def setup(self) -> dict[str, Any]:
        """What identifies this evaluator in the study's set-up record (a study resumes only with the same)."""
        ...

    def trial_attrs(self) -> dict[str, Any]:
        """User attributes every trial records: ``evaluator`` and what it was scored with."""
        ...

    def evaluate(self, trial: optuna.Trial, arch: Architecture) -> Evaluation:
        """Score ``arch`` for ``trial``; may raise ``optuna.TrialPruned`` or a failure of the trial."""
        ...

    def follow(self, arch: Architecture) -> None:
        """On a non-main process: take part in evaluating the architecture the main process broadcast."""
        ...


# ---------------------------------------------------------------------- from scratch
class ScratchEvaluator:
    """Trains each architecture from scratch with the recipe's ``train`` section (the per-trial budget)."""

    kind = "scratch"

    def __init__(self, recipe: Recipe, data: TokenData, accelerator: Accelerator) -> None:
        self.recipe, self.data, self.accelerator = recipe, data, accelerator

    def setup(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def trial_attrs(self) -> dict[str, Any]:
        return {"evaluator": self.kind}

    def evaluate(self, trial: optuna.Trial, arch: Architecture) -> Evaluation:
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
            trial.set_user_attr("diverged", True)  # a property of the architecture and budget: reused
            trial.set_user_attr("fail_reason", str(e))
            raise
        except TrainingPruned as e:
            trial.set_user_attr("pruned_at_step", e.step)
            raise optuna.TrialPruned(str(e)) from None
        except (TrainingFailed, torch.OutOfMemoryError) as e:
            trial.set_user_attr("fail_reason", str(e) if isinstance(e, TrainingFailed) else describe(e))
            raise
        measured = {key: getattr(result, key) for key in RESULT_ATTRS}
        return Evaluation({**measured, "history": result.history}, model)

    def follow(self, arch: Architecture) -> None:
        with contextlib.suppress(TrainingDiverged, TrainingPruned, TrainingFailed):  # the main process records it
            train(arch, self.data, self.recipe.train, self.accelerator, report=lambda step, value: False)


# ---------------------------------------------------------------------- zero-cost proxies
def proxy_batch(recipe: Recipe, data: TokenData) -> Batch:
    """The one batch every data-reading proxy of a study sees: ``train.batch_size`` training windows of the
    block size, drawn with ``train.seed`` as the training loop draws them."""
    return data_batch(data.train, recipe.data.block_size, recipe.train.batch_size, recipe.train.seed)


class ProxyScorer:
    """Computes zero-cost proxies for a study: its batch (made once, when a proxy reads data) and seed
    (``train.seed``, which also seeds the initialisation of trained trials), on one CPU thread."""

    def __init__(self, recipe: Recipe, data: TokenData) -> None:
        self.recipe, self.data, self.seed = recipe, data, recipe.train.seed
        self._batch: Batch | None = None

    def scores(self, names: list[str], arch: Architecture) -> dict[str, float]:
        """``{proxy: value}`` for the proxies ``names``."""
        out = {}
        for name in names:
            proxy = get_proxy(name)
            if proxy.needs_data and self._batch is None:
                self._batch = proxy_batch(self.recipe, self.data)
            with one_thread():
                out[name] = proxy.fn(arch, self._batch if proxy.needs_data else None, self.seed)
        return out


class ProxyEvaluator:
    """Scores each architecture with the zero-cost proxy ``search.proxy`` at initialisation, untrained."""

    kind = "proxy"

    def __init__(self, recipe: Recipe, data: TokenData) -> None:
        assert recipe.search.proxy is not None  # the recipe checked it
        self.proxy = recipe.search.proxy
        self.scorer = ProxyScorer(recipe, data)

    def setup(self) -> dict[str, Any]:
        return {"kind": self.kind, "proxy": self.proxy}

    def trial_attrs(self) -> dict[str, Any]:
        return {"evaluator": self.kind, "proxy": self.proxy}

    def evaluate(self, trial: optuna.Trial, arch: Architecture) -> Evaluation:
        start = time.perf_counter()
        scores = self.scorer.scores([self.proxy], arch)
        return Evaluation({**scores, "proxy_seconds": time.perf_counter() - start})

    def follow(self, arch: Architecture) -> None:
        """Never called: proxies are computed on the main process alone (nothing is broadcast)."""


# ---------------------------------------------------------------------- a trained supernet
def supernet_location(recipe: Recipe) -> Path:
    """The supernet a search scores with: ``search.supernet``, else the recipe's own supernet folder
    (``supernet.out``, else ``<run_dir>/<study>/supernet``, where ``llmnas supernet train`` writes it)."""
    if recipe.search.supernet is not None:
        return Path(recipe.search.supernet)
    section = recipe.supernet
    return Path(section.out) if section is not None and section.out else recipe.study_dir / "supernet"


class SupernetEvaluator:
    """Evaluates each architecture with the weights it inherits from a trained supernet, on the validation
    windows a from-scratch trial's intermediate validations use (:func:`llmnas.supernet.evaluate_subnet`), or
    after ``search.finetune_steps`` of training from them (:func:`llmnas.supernet.finetune_subnet`).

    Raises:
        RecipeError: no supernet where the recipe says, or one that cannot be loaded (named with the key).
    """

    kind = "supernet"

    def __init__(self, recipe: Recipe, data: TokenData, accelerator: Accelerator) -> None:
        from llmnas.supernet import evaluate_subnet, finetune_subnet, load_supernet

        self.recipe, self.data, self.accelerator = recipe, data, accelerator
        location = supernet_location(recipe)
        key = "search.supernet" if recipe.search.supernet is not None else "search.supernet (default)"
        if not location.exists():
            raise RecipeError(
                f"{recipe.source}: {key}: {location}: no supernet there; train it first (llmnas supernet train "
                f"{recipe.source}) or name one with --set search.supernet=PATH"
            )
        try:
            checkpoint = load_supernet(location, device=accelerator.device)
        except LlmnasError as e:
            raise RecipeError(f"{recipe.source}: {key}: {e}") from None
        self.net, self.path, self.id = checkpoint.net, checkpoint.path, checkpoint.id
        self._evaluate_subnet, self._finetune_subnet = evaluate_subnet, finetune_subnet
        self.finetune = {"finetune_steps": recipe.search.finetune_steps} if recipe.search.finetune_steps else {}
        if self.finetune:
            self.finetune["finetune_lr"] = recipe.search.finetune_lr or recipe.train.lr
        self.calibration = recipe.search.calibration
        if self.calibration is not None:
            self.calibration.check(self.net.space.choices(), f"{recipe.source}: search.calibration")
        # what changes the trials' values: part of the study's set-up, recorded by every trial
        self.options = dict(self.finetune)
        self.whole_split = recipe.search.whole_split and not self.finetune  # fine-tuning scores the whole split
        if self.whole_split:
            self.options["whole_split"] = True
        if self.calibration is not None:
            self.options["calibration"] = self.calibration.to_dict()

    def setup(self) -> dict[str, Any]:
        return {"kind": self.kind, "supernet_id": self.id, **self.options}

    def trial_attrs(self) -> dict[str, Any]:
        return {"evaluator": self.kind, "supernet_path": str(self.path), "supernet_id": self.id, **self.options}

    def evaluate(self, trial: optuna.Trial, arch: Architecture) -> Evaluation:
        try:
            self.net.check(arch)
        except ArchitectureError as e:
            raise RecipeError(
                f"{self.recipe.source}: search.supernet: {self.path} does not hold the search's architecture "
                f"{arch.id} ({e}); the supernet was trained on another space, block size or tokenizer"
            ) from None
        broadcast_object_list([{"arch": arch.to_json()}])  # followers evaluate the same architecture
        measured = {key: value for key, value in self._score(arch).to_dict().items() if value is not None}
        if self.calibration is not None:
            predicted = self.calibration.predict(arch, measured["val_loss"])  # checked against the space already
            # the bits are proportional to the loss over the same windows
            scale = predicted / measured["val_loss"]
            for key in ("bits_per_byte", "bits_per_char"):
                if key in measured:
                    measured[f"inherited_{key}"], measured[key] = measured[key], measured[key] * scale
            measured["inherited_val_loss"], measured["val_loss"] = measured["val_loss"], predicted
        return Evaluation(measured)

    def follow(self, arch: Architecture) -> None:
        self._score(arch)

    def _score(self, arch: Architecture) -> Any:
        if self.finetune:
            return self._finetune_subnet(self.net, arch, self.data, self.recipe.train, self.accelerator,
                                         self.finetune["finetune_steps"], self.finetune["finetune_lr"])
        return self._evaluate_subnet(self.net, arch, self.data, self.recipe.train, self.accelerator,
                                     whole_split=self.whole_split)


# ---------------------------------------------------------------------- choosing and reading back
def make_evaluator(recipe: Recipe, data: TokenData, accelerator: Accelerator) -> Evaluator:
    """The evaluator ``recipe.search.evaluator`` names."""
    kind = recipe.search.evaluator
    if kind == "proxy":
        return ProxyEvaluator(recipe, data)
    if kind == "supernet":
        return SupernetEvaluator(recipe, data, accelerator)
    return ScratchEvaluator(recipe, data, accelerator)


def objective_values(objectives: tuple[str, ...] | list[str], values: dict[str, Any]) -> list[float]:
    """The trial's values of ``objectives`` from its measurements and counts: a proxy objective
    (``neg_synflow``) is its proxy's value, negated when larger is better."""
    out = []
    for objective in objectives:
        proxy = proxy_of_objective(objective)
        out.append(objective_value(proxy, values[proxy]) if proxy else float(values[objective]))
    return out


def extra_proxies(objectives: tuple[str, ...] | list[str], measured: dict[str, Any]) -> list[str]:
    """Proxies that ``objectives`` name and the evaluator did not measure (e.g. ``neg_synflow`` beside
    ``val_loss``): they are computed on the untrained architecture."""
    names = [proxy_of_objective(o) for o in objectives]
    return [n for n in names if n is not None and n not in measured]
