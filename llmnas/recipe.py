"""Recipes: YAML values for the search and training entry points, validated once at the edge.

A recipe names a search space, a data set, a training budget per trial, a search strategy and the
objectives. ``--set key=value`` overrides any value by its dotted path before validation
(``--set train.max_seconds=30 --set search.sampler=tpe``).

Example::

    study: quickstart
    space: tiny
    data: {source: stdlib, tokenizer: byte, block_size: 128}
    train: {batch_size: 16, max_seconds: 20, lr: 2.0e-3}
    search: {sampler: evolution, n_trials: 16, objectives: [val_loss]}
    retrain: {max_seconds: 120}
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmnas.data import DataConfig
from llmnas.errors import DataError, LlmnasError, RecipeError
from llmnas.space import read_yaml
from llmnas.train import TrainConfig

OBJECTIVES = {
    # name: (direction, what it measures)
    "val_loss": ("minimize", "validation cross-entropy, nats/token, whole validation split"),
    "bits_per_byte": ("minimize", "validation bits per UTF-8 byte"),
    "params": ("minimize", "total parameters"),
    "active_params": ("minimize", "parameters used per token (MoE)"),
    "non_embedding_params": ("minimize", "parameters outside the embeddings"),
    "flops_per_token": ("minimize", "forward FLOPs per token at the block size"),
    "kv_cache_bytes_per_token": ("minimize", "KV-cache bytes per token (bf16)"),
}
QUALITY = ("val_loss", "bits_per_byte")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")
CONSTRAINT_MODES = ("reject", "sampler")
BUDGET_KEYS = {"max_steps", "max_tokens", "max_seconds"}
TOP_KEYS = ("study", "description", "space", "data", "train", "search", "retrain", "run_dir")


@dataclass(frozen=True, kw_only=True)
class PrunerConfig:
    """An Optuna pruner acting on the intermediate validation losses of a trial."""

    kind: str = "none"
    """One of ``none``, ``median``, ``percentile``, ``successive_halving``, ``hyperband``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the Optuna pruner (e.g. ``n_startup_trials``, ``n_warmup_steps``,
    ``min_resource``, ``reduction_factor``); steps are optimizer steps."""


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """How the study searches."""

    sampler: str = "evolution"
    """``evolution``, ``reinforce`` (llmnas), or Optuna's ``random``, ``tpe``, ``nsga2``, ``gp``."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the sampler (e.g. ``population_size``, ``sample_size``)."""
    n_trials: int = 20
    """Trials the study should hold when done; re-running the command resumes up to this number."""
    timeout: float | None = None
    """Stop starting new trials after this many seconds of this run."""
    objectives: tuple[str, ...] = ("val_loss",)
    """What is minimised: ``val_loss`` or ``bits_per_byte`` first, then optionally ``params``,
    ``active_params``, ``non_embedding_params``, ``flops_per_token``, ``kv_cache_bytes_per_token``."""
    constraints: dict[str, int] = field(default_factory=dict)
    """Hard limits added to the space's own (``max_params``, ``min_params``, ``max_active_params``, ...)."""
    constraint_mode: str = "reject"
    """``reject``: an architecture over a limit is not trained (the trial ends PRUNED, with the reason
    recorded); ``sampler``: it is trained and the limits go to the sampler as Optuna trial constraints
    (``Trial.set_constraint``), which tpe, nsga2, gp and the llmnas samplers prefer to satisfy."""
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: str | None = None
    """Optuna storage URL; default a SQLite file ``<run_dir>/study.db``."""
    seed: int = 0
    """Seed of the sampler."""
    top_k: int = 5
    """Rows of the summary table at the end."""
    save_checkpoints: bool = False
    """Keep every trained trial's weights under ``<run_dir>/trials/<number>/``."""
    workers: int = 1
    """Worker processes sharing the study on this machine (each trains its own trials)."""
    heartbeat_seconds: int = 30
    """How often a running trial tells an RDB storage it is alive."""
    grace_seconds: int = 120
    """A running trial silent this long is failed (its worker was killed) when the study next starts a trial."""

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A whole search (and retraining) recipe."""

    study: str
    """Study name; also the run folder ``runs/<study>``."""
    space: str
    """Search-space YAML path, or a shipped space's name (``tiny``, ``small``, ``moe``)."""
    data: DataConfig
    train: TrainConfig
    """Training of each trial (its budget is the per-trial budget)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    retrain: TrainConfig | None = None
    """Training used by ``llmnas train`` to retrain a chosen architecture (defaults to ``train``)."""
    description: str = ""
    run_dir: str = "runs"
    """Folder holding one sub-folder per study."""
    source: str = "<recipe>"

    @property
    def study_dir(self) -> Path:
        return Path(self.run_dir) / self.study

    @property
    def storage_url(self) -> str:
        return self.search.storage or f"sqlite:///{self.study_dir / 'study.db'}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def resolve_recipe_path(name: str | Path) -> Path:
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(name):
        return path
    return RECIPES_DIR / f"{name}.yaml"


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem names the file and the key."""
    path = resolve_recipe_path(path)
    data = read_yaml(path, error=RecipeError)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    data = apply_overrides(data, overrides, str(path))
    return recipe_from_dict(data, str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """``key.sub=value`` pairs set values by dotted path; the value is read as YAML (``1e-3``, ``[a, b]``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {part!r} in {source} is not a mapping")
        node[parts[-1]] = value
    return data


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise RecipeError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(TOP_KEYS)})")
    for key in ("study", "space", "data", "train"):
        if key not in data:
            raise RecipeError(f"{source}: {key}: missing (required)")
    for key in ("study", "space"):
        if not isinstance(data[key], str) or not data[key]:
            raise RecipeError(f"{source}: {key}: {data[key]!r} must be a non-empty string")
    try:
        data_cfg = DataConfig.from_dict(_mapping(data, "data", source), where=f"{source}: data")
    except DataError as e:
        raise RecipeError(str(e)) from None
    train = _dataclass(TrainConfig, _mapping(data, "train", source), f"{source}: train")
    retrain = None
    if data.get("retrain") is not None:
        overrides = _mapping(data, "retrain", source)
        base = dataclasses.asdict(train)
        if BUDGET_KEYS & overrides.keys():  # a retrain budget replaces the per-trial budget entirely
            base.update(dict.fromkeys(BUDGET_KEYS))
        retrain = _dataclass(TrainConfig, {**base, **overrides}, f"{source}: retrain")
    search = _search(_mapping(data, "search", source, required=False), f"{source}: search")
    return Recipe(
        study=data["study"],
        space=data["space"],
        data=data_cfg,
        train=train,
        search=search,
        retrain=retrain,
        description=str(data.get("description", "")),
        run_dir=str(data.get("run_dir", "runs")),
        source=source,
    )


def _mapping(data: dict, key: str, source: str, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: {key}: must be a mapping, got {value!r}")
    return value


def _dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a mapping: unknown keys and wrong types name ``where`` and the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise RecipeError(f"{where}.{key}: unknown key (allowed: {', '.join(fields)})")
    clean = {}
    for key, value in values.items():
        kinds = {k.strip() for k in str(fields[key].type).split("|")}
        if value is None:
            if "None" not in kinds:
                raise RecipeError(f"{where}.{key}: null is not allowed")
        elif "float" in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not any(_is(value, k) for k in kinds - {"None"}):
            wanted = " or ".join(sorted(kinds)).replace("None", "null")
            raise RecipeError(f"{where}.{key}: {value!r} must be {wanted}")
        clean[key] = value
    try:
        return cls(**clean)
    except LlmnasError as e:
        raise RecipeError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def _is(value: Any, kind: str) -> bool:
    simple = {"int": int, "float": float, "bool": bool, "str": str}
    if kind in simple:
        return isinstance(value, simple[kind]) and (kind == "bool" or not isinstance(value, bool))
    if kind.startswith("dict"):
        return isinstance(value, dict)
    if kind.startswith("tuple"):
        return isinstance(value, (tuple, list))
    return True  # nested dataclasses are checked by their own constructor


def _search(values: dict[str, Any], where: str) -> SearchConfig:
    values = dict(values)
    pruner = values.pop("pruner", None)
    if isinstance(pruner, str):
        pruner = {"kind": pruner}
    pruner_cfg = _dataclass(PrunerConfig, pruner or {}, f"{where}.pruner")
    if pruner_cfg.kind not in PRUNERS:
        raise RecipeError(f"{where}.pruner.kind: {pruner_cfg.kind!r} is not allowed (allowed: {', '.join(PRUNERS)})")
    objectives = values.get("objectives", ["val_loss"])
    if isinstance(objectives, str):
        objectives = [objectives]
    if not isinstance(objectives, list) or not objectives:
        raise RecipeError(f"{where}.objectives: must be a non-empty list (allowed: {', '.join(OBJECTIVES)})")
    for o in objectives:
        if o not in OBJECTIVES:
            raise RecipeError(f"{where}.objectives: {o!r} is not allowed (allowed: {', '.join(OBJECTIVES)})")
    if objectives[0] not in QUALITY or len(set(objectives)) != len(objectives):
        raise RecipeError(
            f"{where}.objectives: {objectives}: the first objective must be val_loss or bits_per_byte, "
            "and none may repeat"
        )
    values["objectives"] = tuple(objectives)
    cfg = _dataclass(SearchConfig, values, where)
    if cfg.constraint_mode not in CONSTRAINT_MODES:
        raise RecipeError(
            f"{where}.constraint_mode: {cfg.constraint_mode!r} is not allowed (allowed: {', '.join(CONSTRAINT_MODES)})"
        )
    if len(objectives) > 1 and pruner_cfg.kind != "none":
        raise RecipeError(f"{where}.pruner: Optuna cannot prune multi-objective studies; use pruner: none")
    if cfg.n_trials < 1 or cfg.workers < 1 or cfg.top_k < 1:
        raise RecipeError(f"{where}: n_trials, workers and top_k must be positive")
    if not isinstance(cfg.constraints, dict):
        raise RecipeError(f"{where}.constraints: must be a mapping of limits")
    return dataclasses.replace(cfg, pruner=pruner_cfg)
