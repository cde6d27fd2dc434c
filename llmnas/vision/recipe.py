"""Recipes for searching a vision cell space by training every sampled cell (``llmnas search``).

A recipe whose ``space`` is an NAS-Bench-201 space is a vision recipe: its ``data`` section names an
image source and how the training set is split, its ``train`` section is a
:class:`~llmnas.vision.train.VisionTrainConfig` (the per-trial budget), and ``truth`` optionally names
the NAS-Bench-201 tables whose 200-epoch accuracies every trial records as ground truth (user
attribute ``ground_truth``; no sampler reads user attributes, and the objective never does).

Example::

    study: nb201_cifar10
    space: nasbench201
    data: {source: ../shared/data/images/cifar10_jpg.tar.gz, valid_images: 5000}
    train: {C: 8, N: 1, batch_size: 128, epochs: 2, train_images: 5000}
    search: {sampler: evolution, n_trials: 100, objectives: [val_error]}
    truth: ../shared/data/nasbench201
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llmnas.errors import RecipeError
from llmnas.recipe import StudyPaths
from llmnas.vision.train import VisionTrainConfig

#: Objectives of a vision search (all minimised): name -> what it measures.
VISION_OBJECTIVES = {
    "val_error": "validation error (%) on the scored validation images, after the per-trial training",
    "val_loss": "validation cross-entropy on the scored validation images",
    "params": "parameters of the cell network (the recipe's C and N)",
}
VISION_KEYS = ("study", "description", "space", "data", "train", "search", "retrain", "truth", "run_dir")


@dataclass(frozen=True, kw_only=True)
class VisionDataConfig:
    """Where the images come from and which of them train and score a trial."""

    source: str
    """A tarball or ImageFolder directory (train/, test/), or a folder of IDX files (see :mod:`llmnas.vision.data`)."""
    split_seed: int = 0
    """Seed of NAS-Bench-201's train/validation halves of the training set (:func:`~llmnas.vision.data.nb201_split`)."""
    valid_images: int | None = None
    """Score each trial on this many images of the validation half (a fixed class-stratified subset); ``None``: all."""
    valid_seed: int = 1
    """Seed of that subset."""

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise RecipeError("data.source: must name an image tarball, ImageFolder directory or IDX folder")
        if self.valid_images is not None and self.valid_images < 1:
            raise RecipeError(f"data.valid_images={self.valid_images}: must be a positive integer or null")
        for name in ("split_seed", "valid_seed"):
            if getattr(self, name) < 0:
                raise RecipeError(f"data.{name}={getattr(self, name)}: must be a non-negative integer")


@dataclass(frozen=True, kw_only=True)
class VisionRecipe(StudyPaths):
    """A search of a vision cell space by training each sampled cell from scratch."""

    study: str
    space: str
    data: VisionDataConfig
    train: VisionTrainConfig
    search: Any = None
    """:class:`llmnas.recipe.SearchConfig` (``evaluator: scratch``; objectives from :data:`VISION_OBJECTIVES`)."""
    retrain: VisionTrainConfig | None = None
    truth: str | None = None
    """Folder of the NAS-Bench-201 tables (``../shared/data/nasbench201``) recorded as ground truth; ``None``: none."""
    description: str = ""
    run_dir: str = "runs"
    source: str = "<recipe>"
    kind: str = field(default="vision", init=False)


def is_vision_space(space: str) -> bool:
    """Whether the recipe's ``space`` (a path or shipped name) is a cell space searched on images."""
    from llmnas.space import read_yaml_mapping, resolve_space_path

    path = resolve_space_path(space)
    if not path.is_file():
        return False
    try:
        return read_yaml_mapping(path).get("kind") == "nasbench201"
    except Exception:  # noqa: BLE001 - a malformed space is reported by the transformer path's own checks
        return False


def vision_recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> VisionRecipe:
    """Validate a parsed vision recipe; every problem raises :class:`RecipeError` naming ``source`` and the key."""
    from llmnas.recipe import (
        SearchConfig,
        _check_sampler,
        _check_search_numbers,
        _check_study_name,
        _dataclass,
        _mapping,
        _pruner,
    )

    unknown = [k for k in data if k not in VISION_KEYS]
    if unknown:
        raise RecipeError(
            f"{source}: unknown key {unknown[0]!r} in a vision recipe (allowed: {', '.join(VISION_KEYS)})"
        )
    for key in ("study", "space", "data", "train"):
        if key not in data:
            raise RecipeError(f"{source}: {key}: missing (required)")
    for key in ("study", "space", "run_dir", "truth"):
        if data.get(key) is not None and (not isinstance(data[key], str) or not data[key]):
            raise RecipeError(f"{source}: {key}={data[key]!r}: must be a non-empty string")
    _check_study_name(data["study"], source)
    data_cfg = _dataclass(VisionDataConfig, _mapping(data, "data", source), source, "data")
    train = _dataclass(VisionTrainConfig, _mapping(data, "train", source), source, "train")
    retrain = None
    if data.get("retrain") is not None:
        overrides = _mapping(data, "retrain", source)
        base = dataclasses.asdict(train)
        if {"epochs", "max_steps", "max_seconds"} & overrides.keys():
            base.update(epochs=None, max_steps=None, max_seconds=None)
        _dataclass(VisionTrainConfig, overrides, source, "retrain", build=False)
        retrain = _dataclass(VisionTrainConfig, {**base, **overrides}, source, "retrain")
    values = dict(_mapping(data, "search", source, required=False))
    objectives = values.pop("objectives", ["val_error"])
    if isinstance(objectives, str):
        objectives = [objectives]
    allowed = ", ".join(VISION_OBJECTIVES)
    if not isinstance(objectives, list) or not objectives or any(o not in VISION_OBJECTIVES for o in objectives):
        raise RecipeError(f"{source}: search.objectives={objectives!r}: must be a non-empty list of {allowed} "
                          "(a vision search minimises them)")
    if objectives[0] == "params" or len(set(objectives)) != len(objectives):
        raise RecipeError(f"{source}: search.objectives={objectives}: val_error or val_loss first, none repeated")
    pruner = _pruner(values.pop("pruner", None), source)
    if pruner.kind != "none":
        if len(objectives) > 1:
            raise RecipeError(f"{source}: search.pruner.kind={pruner.kind!r}: Optuna cannot prune multi-objective "
                              "studies; use pruner: none")
        if train.eval_every_epochs is None:
            raise RecipeError(f"{source}: search.pruner.kind={pruner.kind!r} needs train.eval_every_epochs (the "
                              "epochs between the validations it reads; its steps are epochs), e.g. 1")
    search = dataclasses.replace(_dataclass(SearchConfig, values, source, "search"), pruner=pruner)
    if search.evaluator != "scratch":
        raise RecipeError(f"{source}: search.evaluator={search.evaluator!r}: a vision recipe trains every cell "
                          "(allowed: scratch); the one-shot strategies run under llmnas bench nb201-oneshot")
    if search.constraints:
        raise RecipeError(f"{source}: search.constraints: not supported for a vision cell space (remove it)")
    _check_search_numbers(search, source)
    _check_sampler(search, source)
    search = dataclasses.replace(search, objectives=tuple(objectives))
    truth = data.get("truth")  # the folder is checked when a search starts (a recipe loads without it)
    return VisionRecipe(study=data["study"], space=data["space"], data=data_cfg, train=train, search=search,
                        retrain=retrain, truth=truth, description=str(data.get("description", "")),
                        run_dir=str(data.get("run_dir", "runs")), source=source)
