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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmnas.data import DataConfig
from llmnas.errors import DataError, LlmnasError, RecipeError
from llmnas.hardware.objectives import HW_OBJECTIVES, HardwareConfig
from llmnas.proxies import PROXIES, objective_name
from llmnas.space import SPACES_DIR, read_yaml_mapping, resolve_space_path
from llmnas.space.yaml_io import parse_value, yaml_type
from llmnas.space.yaml_space import CONSTRAINT_KEYS
from llmnas.train import TrainConfig

if TYPE_CHECKING:
    from llmnas.supernet.calibration import Calibration
    from llmnas.supernet.config import SupernetConfig

OBJECTIVES = {
    # name: (direction, what it measures)
    "val_loss": ("minimize", "validation cross-entropy, nats/token, whole validation split"),
    "bits_per_byte": ("minimize", "validation bits per UTF-8 byte"),
    "params": ("minimize", "total parameters"),
    "active_params": ("minimize", "parameters used per token (MoE)"),
    "non_embedding_params": ("minimize", "parameters outside the embeddings"),
    "flops_per_token": ("minimize", "forward FLOPs per token at the block size"),
    "kv_cache_bytes_per_token": ("minimize", "KV-cache bytes per token (bf16)"),
    # neg_synflow, neg_grad_norm, ...: a zero-cost proxy as a minimised objective (negated when larger is better)
    **{
        objective_name(name): ("minimize", f"zero-cost proxy {name} at initialisation"
                               + (", negated" if proxy.direction == "maximize" else ""))
        for name, proxy in PROXIES.items()
    },
    # prefill_ms, decode_tokens_per_s (maximised), peak_memory_mb, train_step_ms: the recipe's hardware section
    **HW_OBJECTIVES,
}
QUALITY = ("val_loss", "bits_per_byte")
EVALUATORS = ("scratch", "proxy", "supernet")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")
CONSTRAINT_MODES = ("reject", "sampler")
BUDGET_KEYS = {"max_steps", "max_tokens", "max_seconds"}
TOP_KEYS = ("study", "description", "space", "data", "train", "search", "retrain", "supernet", "hardware", "run_dir")


@dataclass(frozen=True, kw_only=True)
class PrunerConfig:
    """An Optuna pruner acting on the intermediate validation losses of a trial."""

    kind: str = "none"
    """One of ``none``, ``median``, ``percentile``, ``successive_halving``, ``hyperband``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the Optuna pruner (e.g. ``n_startup_trials``, ``n_warmup_steps``,
    ``min_resource``, ``reduction_factor``); steps are optimizer steps (in a vision recipe: epochs)."""


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
    """Stop starting new trials after this many seconds of this run (positive, or ``None``: no limit)."""
    evaluator: str = "scratch"
    """How a trial scores its architecture:

    - ``scratch``: train it from scratch with the ``train`` section's per-trial budget (the pruner reads its
      intermediate validation losses; the best trials' weights are kept).
    - ``proxy``: compute the zero-cost proxy ``search.proxy`` at initialisation instead of training (well
      under a second); nothing is trained or kept. The first objective must be that proxy's objective
      (``neg_synflow`` for ``proxy: synflow``), and ``val_loss``/``bits_per_byte`` are not available.
    - ``supernet``: evaluate it on the validation split with the weights it inherits from the trained
      supernet checkpoint ``search.supernet`` (no training).

    The evaluator, with the proxy's name or the supernet checkpoint's id, is part of the study's set-up: a
    study is not resumed with another one. Every trial records it (user attribute ``evaluator``, and
    ``proxy``, or ``supernet_path`` and ``supernet_id``)."""
    proxy: str | None = None
    """With ``evaluator: proxy``: ``synflow``, ``grad_norm`` (on one training batch of the recipe's batch
    size, seeded with ``train.seed``), ``params`` or ``non_embedding_params`` (see :mod:`llmnas.proxies`)."""
    supernet: str | None = None
    """With ``evaluator: supernet``: a trained supernet's folder (its latest checkpoint is used) or one
    ``checkpoint-<step>`` folder; a path given must exist. Default: the recipe's own supernet folder
    (``supernet.out``, else ``<run_dir>/<study>/supernet``), which must exist when the search starts."""
    finetune_steps: int = 0
    """With ``evaluator: supernet``: train each architecture this many optimizer steps from the weights it
    inherits (a copy; the ``train`` section's batch and optimizer settings, a fresh AdamW, warm-up over a tenth
    of the steps, cosine to a tenth of ``finetune_lr``) and score it on the whole validation split. ``0``
    (default): score the inherited weights as they are, on ``train.eval_blocks`` windows. Costs the steps per
    trial and ranks architectures closer to training from scratch (``eval/supernet``)."""
    finetune_lr: float | None = None
    """Peak learning rate of ``finetune_steps`` (default: ``train.lr``)."""
    whole_split: bool = False
    """With ``evaluator: supernet``: score the inherited weights on the whole validation split (with
    ``data.holdout``, the holdout) instead of ``train.eval_blocks`` windows, as the fidelity benchmarks do. Forward
    passes only, but several times the windows: a long search on a few hundred windows favours architectures
    that happen to fit those windows (the winner's curse). Part of the study's set-up."""
    calibration: Calibration | None = None
    """With ``evaluator: supernet``: a linear calibration of the supernet's loss against training from scratch
    (:mod:`llmnas.supernet.calibration`; a mapping ``intercept``, ``inherited``, ``per_layer``, ``offsets``).
    Each trial's ``val_loss`` (and its bits) is then the predicted from-scratch loss, and
    ``inherited_val_loss`` the supernet's own measurement. The calibration is part of the study's set-up."""
    objectives: tuple[str, ...] = ("val_loss",)
    """What is minimised: ``val_loss`` or ``bits_per_byte`` first (with ``evaluator: proxy``: the proxy's
    objective), then optionally ``params``, ``active_params``, ``non_embedding_params``, ``flops_per_token``,
    ``kv_cache_bytes_per_token``, and zero-cost proxies as objectives. Every objective is minimised, so a
    proxy for which larger is better (all four are) is named ``neg_<proxy>`` and its value is the negated
    score: ``neg_synflow``, ``neg_grad_norm``, ``neg_params``, ``neg_non_embedding_params``. Beside
    ``val_loss`` (``evaluator: scratch``) a proxy objective is computed on the untrained model of the trial.
    Hardware objectives may follow the first: ``prefill_ms``, ``decode_tokens_per_s`` (the one maximised),
    ``peak_memory_mb``, ``train_step_ms``, measured or predicted as the ``hardware`` section says."""
    constraints: dict[str, int] = field(default_factory=dict)
    """Hard limits added to the space's own (``max_params``, ``min_params``, ``max_active_params``, ...);
    positive integers (``8e5`` is read as 800000)."""
    constraint_mode: str = "reject"
    """``reject``: an architecture over a limit is not trained (the trial ends PRUNED, with the reason
    recorded); ``sampler``: it is trained and the limits go to the sampler as Optuna trial constraints
    (``Trial.set_constraint``), which tpe, nsga2, gp and the llmnas samplers prefer to satisfy."""
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: str | None = None
    """Optuna storage URL; default a SQLite file ``<run_dir>/study.db``."""
    seed: int = 0
    """Seed of the sampler (a non-negative integer)."""
    top_k: int = 5
    """Rows of the summary table at the end."""
    keep_checkpoints: int = 3
    """Keep the weights of the best this many trained trials (by the first objective) under
    ``<run_dir>/<study>/trials/<number>/``, so that ``llmnas export runs/<study> --trial best`` works
    straight after the search; weaker ones are deleted as better ones arrive. ``0`` keeps none."""
    checkpoint_max_mb: float = 512.0
    """Weights larger than this (float32 megabytes) are not kept: retrain the winner with ``llmnas train``."""
    save_checkpoints: bool = False
    """Keep every trained trial's weights under ``<run_dir>/<study>/trials/<number>/`` (not only the best)."""
    workers: int = 1
    """Worker processes sharing the study on this machine (each trains its own trials)."""
    heartbeat_seconds: int = 30
    """How often a running trial tells an RDB storage it is alive (a positive number of seconds)."""
    grace_seconds: int = 120
    """A running trial silent this long is failed (its worker was killed) when the study next starts a trial;
    must be greater than ``heartbeat_seconds``, since a live worker is silent for up to one interval."""

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]


class StudyPaths:
    """Where a recipe's study lives, shared by the transformer and the vision recipes (dataclasses with
    ``study``, ``run_dir``, ``search.storage`` and ``source``)."""

    study: str
    run_dir: str
    search: Any
    source: str

    @property
    def study_dir(self) -> Path:
        return Path(self.run_dir) / self.study

    @property
    def storage_url(self) -> str:
        return self.search.storage or f"sqlite:///{self.study_dir / 'study.db'}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d.pop("source")
        return d


@dataclass(frozen=True, kw_only=True)
class Recipe(StudyPaths):
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
    supernet: SupernetConfig | None = None
    """How ``llmnas supernet train`` trains the weight-shared supernet of the space (``None``: no supernet)."""
    hardware: HardwareConfig | None = None
    """How hardware objectives and caps (``prefill_ms``, ``decode_tokens_per_s``, ``peak_memory_mb``, ...) are
    measured or predicted (:mod:`llmnas.hardware.objectives`); ``None`` unless the recipe has a ``hardware``
    section or names a hardware objective (then: measured on the CPU with default settings)."""
    supernet_train: TrainConfig | None = None
    """The supernet's training (``supernet.train``: its budget counts optimizer steps of the whole
    sandwich); keys not given there are the recipe's ``train`` keys, budget aside."""
    description: str = ""
    run_dir: str = "runs"
    """Folder holding one sub-folder per study."""
    source: str = "<recipe>"


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def resolve_recipe_path(name: str | Path) -> Path:
    """A path as given, or the name of a shipped recipe (``quickstart`` -> ``recipes/quickstart.yaml``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(name):
        return path
    return RECIPES_DIR / f"{name}.yaml"


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem names the file and the key."""
    name, path = path, resolve_recipe_path(path)
    if path.parent == RECIPES_DIR and not path.exists() and str(name) == path.stem:
        shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise RecipeError(f"recipe {name!r}: no such file, and not a shipped recipe (shipped: {shipped})")
    data = read_yaml_mapping(path, error=RecipeError)
    data = apply_overrides(data, overrides, str(path))
    return recipe_from_dict(data, str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """``key.sub=value`` pairs set values by dotted path; the value is read as YAML (``1e-3``, ``[a, b]``).

    ``search.sampler=NAME`` naming another sampler than the file's also drops the file's
    ``search.sampler_options`` (they are the other sampler's); ``--set search.sampler_options.KEY=...``
    gives the new sampler its own.
    """
    data = copy.deepcopy(data)
    search = data.get("search")
    keys = [item.partition("=")[0].strip() for item in overrides]
    if isinstance(search, dict) and "search.sampler" in keys:
        new = parse_value(overrides[keys.index("search.sampler")].partition("=")[2])
        if new != search.get("sampler"):
            search.pop("sampler_options", None)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. train.max_steps=100")
        node = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                where = ".".join(parts[: i + 1])
                raise RecipeError(f"--set {item!r}: {where} in {source} is {yaml_type(node)}, not a mapping of keys")
        node[parts[-1]] = parse_value(raw)
    return data


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe; every problem raises :class:`RecipeError` naming ``source`` and the dotted key."""
    if isinstance(data.get("space"), str):
        from llmnas.vision.recipe import is_vision_space, vision_recipe_from_dict

        if is_vision_space(data["space"]):  # a cell space searched by training on images
            return vision_recipe_from_dict(data, source)  # type: ignore[return-value]
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise RecipeError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(TOP_KEYS)})")
    for key in ("study", "space", "data", "train"):
        if key not in data:
            raise RecipeError(f"{source}: {key}: missing (required)")
    for key in ("study", "space", "run_dir"):
        if key in data and (not isinstance(data[key], str) or not data[key]):
            raise RecipeError(f"{source}: {key}={data[key]!r}: must be a non-empty string")
    if not isinstance(data.get("description", ""), str):
        raise RecipeError(f"{source}: description={data['description']!r}: must be a string")
    _check_study_name(data["study"], source)
    _check_space(data["space"], source)
    data_cfg = _data(_mapping(data, "data", source), source)
    train = _dataclass(TrainConfig, _mapping(data, "train", source), source, "train")
    retrain = None
    if data.get("retrain") is not None:
        retrain = _over_train(train, _mapping(data, "retrain", source), source, "retrain")
    search = _search(_mapping(data, "search", source, required=False), source)
    supernet, supernet_train = _supernet(data, train, source)
    hardware = _hardware(data, search, source)
    return Recipe(
        study=data["study"],
        space=data["space"],
        data=data_cfg,
        train=train,
        search=search,
        retrain=retrain,
        supernet=supernet,
        supernet_train=supernet_train,
        hardware=hardware,
        description=str(data.get("description", "")),
        run_dir=str(data.get("run_dir", "runs")),
        source=source,
    )


def _over_train(train: TrainConfig, overrides: dict[str, Any], source: str, section: str) -> TrainConfig:
    """``train`` with ``overrides``; a budget given there replaces ``train``'s budget entirely."""
    base = dataclasses.asdict(train)
    if BUDGET_KEYS & overrides.keys():
        base.update(dict.fromkeys(BUDGET_KEYS))
    _dataclass(TrainConfig, overrides, source, section, build=False)  # names the section's own keys
    return _dataclass(TrainConfig, {**base, **overrides}, source, section)


def _supernet(data: dict[str, Any], train: TrainConfig, source: str) -> tuple[Any, TrainConfig | None]:
    from llmnas.supernet.config import SupernetConfig

    if data.get("supernet") is None:
        return None, None
    values = dict(_mapping(data, "supernet", source))
    train_values = values.pop("train", None) or {}
    if not isinstance(train_values, dict):
        raise RecipeError(f"{source}: supernet.train: must be a mapping of keys, got {yaml_type(train_values)}")
    cfg = _dataclass(SupernetConfig, values, source, "supernet")
    return cfg, _over_train(train, train_values, source, "supernet.train")


def _hardware(data: dict[str, Any], search: SearchConfig, source: str) -> HardwareConfig | None:
    """The ``hardware`` section; without one, default settings when an objective needs it."""
    if data.get("hardware") is None:
        return HardwareConfig() if any(o in HW_OBJECTIVES for o in search.objectives) else None
    return _dataclass(HardwareConfig, _mapping(data, "hardware", source), source, "hardware")


def _check_study_name(study: str, source: str) -> None:
    if "/" in study or "\\" in study or study in (".", ".."):
        raise RecipeError(
            f"{source}: study={study!r}: must be a name, not a path (it names the folder <run_dir>/<study>)"
        )


def _check_space(space: str, source: str) -> None:
    path = resolve_space_path(space)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        what = "is a directory" if path.is_dir() else "no such file"
        raise RecipeError(f"{source}: space={space!r}: {what} (give a space YAML file or a shipped space: {shipped})")


def _mapping(data: dict, key: str, source: str, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: {key}: must be a mapping of keys, got {yaml_type(value)} ({value!r})")
    return value


def _dataclass(cls: type, values: dict[str, Any], source: str, section: str, build: bool = True) -> Any:
    """Build a dataclass from a mapping; every problem names ``source`` and the key ``section.<field>``.

    Unknown keys, missing required keys, wrong types and non-finite numbers are found here; the
    dataclass's own checks (ranges) raise :class:`LlmnasError` in its constructor, whose message is
    given the section's name. With ``build=False`` only the keys and types are checked, and the
    checked values are returned (ints given as floats, ``5e7``, made ints).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise RecipeError(f"{source}: {section}.{key}: unknown key (allowed: {', '.join(fields)})")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in values:
            raise RecipeError(f"{source}: {section}.{name}: missing (required)")
    clean = {key: _typed(value, str(fields[key].type), source, f"{section}.{key}") for key, value in values.items()}
    if not build:
        return clean
    try:
        return cls(**clean)
    except LlmnasError as e:
        raise RecipeError(f"{source}: {_in_section(str(e), section)}") from None


def _typed(value: Any, annotation: str, source: str, key: str) -> Any:
    """``value`` checked against a field's annotation (``int | None``, ``float``, ``dict[str, Any]``, ...)."""
    kinds = {k.strip() for k in annotation.split("|")}
    words = {"None": "null", "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    wanted = " or ".join(
        sorted(words.get(k, "a mapping" if k.startswith("dict") else "a list" if k.startswith("tuple") else k)
               for k in kinds)
    )
    if value is None:
        if "None" not in kinds:
            raise RecipeError(f"{source}: {key}=null: not allowed (must be {wanted})")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{source}: {key}={value!r}: must be a finite number")
    if "float" in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if "int" in kinds and isinstance(value, float) and value.is_integer():
        return int(value)  # 5e7 tokens reads as a float
    if not any(_is(value, k) for k in kinds - {"None"}):
        raise RecipeError(f"{source}: {key}={value!r}: must be {wanted}")
    return value


def _in_section(message: str, section: str) -> str:
    """A config's own message (``train.lr=...: ...``, ``train: ...``) with its key placed under ``section``."""
    if message.startswith((f"{section}.", f"{section}:")):  # the config names its own section already
        return message
    head = re.match(r"(train|data)(?=[.:])", message)
    if head:  # every key of that config in the message: "train.lr=0, train.min_lr=1: ..."
        return re.sub(rf"\b{head.group(1)}(?=[.:])", section, message)
    return f"{section}: {message}"


def _is(value: Any, kind: str) -> bool:
    simple = {"int": int, "float": float, "bool": bool, "str": str}
    if kind in simple:
        return isinstance(value, simple[kind]) and (kind == "bool" or not isinstance(value, bool))
    if kind.startswith("dict"):
        return isinstance(value, dict)
    if kind.startswith("tuple"):
        return isinstance(value, (tuple, list))
    return True  # nested dataclasses and Literal[...] are checked by their own constructor


def _data(values: dict[str, Any], source: str) -> DataConfig:
    """The data section; DataConfig's problems (``invalid data config: a=1: ...; b=2: ...``) each get ``data.``."""
    values = _dataclass(DataConfig, values, source, "data", build=False)
    try:
        return DataConfig.from_dict(values, where="data")
    except DataError as e:
        text = str(e).removeprefix("data: ").removeprefix("invalid data config: ")
        parts = [p if p.startswith("data") else f"data.{p}" for p in text.split("; ")]
        raise RecipeError(f"{source}: " + "; ".join(parts)) from None


def _pruner(pruner: Any, source: str) -> PrunerConfig:
    """``search.pruner``: a name or a mapping (kind, options)."""
    if isinstance(pruner, str):
        pruner = {"kind": pruner}
    if pruner is not None and not isinstance(pruner, dict):
        raise RecipeError(f"{source}: search.pruner={pruner!r}: must be a pruner name or a mapping (kind, options)")
    pruner_cfg = _dataclass(PrunerConfig, pruner or {}, source, "search.pruner")
    if pruner_cfg.kind not in PRUNERS:
        raise RecipeError(
            f"{source}: search.pruner.kind={pruner_cfg.kind!r}: not allowed (allowed: {', '.join(PRUNERS)})"
        )
    return pruner_cfg


def _search(values: dict[str, Any], source: str) -> SearchConfig:
    values = dict(values)
    pruner_cfg = _pruner(values.pop("pruner", None), source)
    values["objectives"] = _objectives(values.get("objectives", ["val_loss"]), source)
    calibration = values.pop("calibration", None)
    cfg = _dataclass(SearchConfig, values, source, "search")
    if calibration is not None:
        from llmnas.supernet.calibration import Calibration

        cfg = dataclasses.replace(cfg, calibration=Calibration.from_dict(calibration, f"{source}: search.calibration"))
    _check_evaluator(cfg, source)
    if cfg.constraint_mode not in CONSTRAINT_MODES:
        raise RecipeError(
            f"{source}: search.constraint_mode={cfg.constraint_mode!r}: not allowed "
            f"(allowed: {', '.join(CONSTRAINT_MODES)})"
        )
    if len(cfg.objectives) > 1 and pruner_cfg.kind != "none":
        raise RecipeError(
            f"{source}: search.pruner.kind={pruner_cfg.kind!r}: Optuna cannot prune multi-objective studies; "
            "use pruner: none"
        )
    _check_search_numbers(cfg, source)
    _check_sampler(cfg, source)
    constraints = _constraints(cfg.constraints, source)
    return dataclasses.replace(cfg, pruner=pruner_cfg, constraints=constraints)


def _objectives(objectives: Any, source: str) -> tuple[str, ...]:
    allowed = ", ".join(OBJECTIVES)
    if isinstance(objectives, str):
        objectives = [objectives]
    if not isinstance(objectives, list) or not objectives:
        raise RecipeError(f"{source}: search.objectives={objectives!r}: must be a non-empty list (allowed: {allowed})")
    for o in objectives:
        if o not in OBJECTIVES:
            raise RecipeError(f"{source}: search.objectives: {o!r} is not allowed (allowed: {allowed})")
    if len(set(objectives)) != len(objectives):
        raise RecipeError(f"{source}: search.objectives={objectives}: none may repeat")
    return tuple(objectives)


def _check_evaluator(cfg: SearchConfig, source: str) -> None:
    """``search.evaluator`` with the keys it reads (``proxy``, ``supernet``) and the first objective it can give."""
    if cfg.evaluator not in EVALUATORS:
        raise RecipeError(
            f"{source}: search.evaluator={cfg.evaluator!r}: not allowed (allowed: {', '.join(EVALUATORS)})"
        )
    for key in ("proxy", "supernet"):
        if getattr(cfg, key) is not None and cfg.evaluator != key:
            raise RecipeError(
                f"{source}: search.{key}={getattr(cfg, key)!r}: only read with search.evaluator: {key} (the evaluator "
                f"is {cfg.evaluator!r}); set search.evaluator={key} or remove search.{key}"
            )
    objectives = list(cfg.objectives)
    if cfg.evaluator == "proxy":
        _check_proxy(cfg.proxy, source)
        wanted = objective_name(cfg.proxy)
        trained = [o for o in objectives if o in QUALITY]
        if objectives[0] != wanted or trained:
            raise RecipeError(
                f"{source}: search.objectives={objectives}: with search.evaluator: proxy the first objective must be "
                f"{wanted} (the {cfg.proxy} score{', negated' if wanted != cfg.proxy else ''}: objectives are "
                f"minimised), and val_loss or bits_per_byte need training; e.g. --set search.objectives=[{wanted}]"
            )
        return
    if cfg.evaluator == "supernet":
        _check_supernet(cfg.supernet, source)
    _check_finetune(cfg, source)
    if objectives[0] not in QUALITY:
        raise RecipeError(
            f"{source}: search.objectives={objectives}: with search.evaluator: {cfg.evaluator} the first objective "
            f"must be val_loss or bits_per_byte (a proxy first needs search.evaluator: proxy)"
        )


def _check_finetune(cfg: SearchConfig, source: str) -> None:
    steps, lr = cfg.finetune_steps, cfg.finetune_lr
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise RecipeError(f"{source}: search.finetune_steps={steps!r}: must be a non-negative integer (0: none)")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
        raise RecipeError(f"{source}: search.finetune_lr={lr!r}: must be a positive number, or null for train.lr")
    if (steps or lr is not None) and cfg.evaluator != "supernet":
        raise RecipeError(
            f"{source}: search.finetune_steps / finetune_lr: only read with search.evaluator: supernet (the evaluator "
            f"is {cfg.evaluator!r})"
        )
    if not isinstance(cfg.whole_split, bool):
        raise RecipeError(f"{source}: search.whole_split={cfg.whole_split!r}: must be true or false")
    if cfg.whole_split and cfg.evaluator != "supernet":
        raise RecipeError(
            f"{source}: search.whole_split: only read with search.evaluator: supernet (the evaluator is "
            f"{cfg.evaluator!r}); remove it or set search.evaluator=supernet"
        )
    if cfg.calibration is not None and cfg.evaluator != "supernet":
        raise RecipeError(
            f"{source}: search.calibration: only read with search.evaluator: supernet (the evaluator is "
            f"{cfg.evaluator!r}); remove it or set search.evaluator=supernet"
        )


def _check_proxy(proxy: str | None, source: str) -> None:
    allowed = ", ".join(PROXIES)
    if proxy is None:
        raise RecipeError(
            f"{source}: search.proxy: missing (required with search.evaluator: proxy; allowed: {allowed})"
        )
    if proxy not in PROXIES:
        raise RecipeError(f"{source}: search.proxy={proxy!r}: not allowed (allowed: {allowed})")


def _check_supernet(path: str | None, source: str) -> None:
    if path is None:
        return  # the recipe's own supernet folder, looked for when the search starts (it may be trained later)
    if not path.strip():
        raise RecipeError(f"{source}: search.supernet={path!r}: must be a supernet folder, or null for the default")
    if not Path(path).exists():
        raise RecipeError(
            f"{source}: search.supernet={path!r}: no such folder (give a trained supernet's folder, written by "
            "llmnas supernet train)"
        )
    if not Path(path).is_dir():
        raise RecipeError(f"{source}: search.supernet={path!r}: is a file, not a supernet checkpoint folder")


def _check_search_numbers(cfg: SearchConfig, source: str) -> None:
    for key in ("n_trials", "workers", "top_k", "heartbeat_seconds", "grace_seconds"):
        value = getattr(cfg, key)
        if value < 1:
            raise RecipeError(f"{source}: search.{key}={value!r}: must be a positive integer")
    if cfg.grace_seconds <= cfg.heartbeat_seconds:
        raise RecipeError(
            f"{source}: search.grace_seconds={cfg.grace_seconds}: must be greater than "
            f"search.heartbeat_seconds={cfg.heartbeat_seconds} (a live worker is silent for up to one heartbeat "
            "interval; Optuna's default grace is twice the interval)"
        )
    if cfg.keep_checkpoints < 0:
        raise RecipeError(f"{source}: search.keep_checkpoints={cfg.keep_checkpoints}: must be 0 or more")
    if not 0 < cfg.checkpoint_max_mb < math.inf:
        raise RecipeError(f"{source}: search.checkpoint_max_mb={cfg.checkpoint_max_mb}: must be a positive number")
    if cfg.timeout is not None and cfg.timeout <= 0:
        raise RecipeError(f"{source}: search.timeout={cfg.timeout!r}: must be a positive number of seconds or null")
    if cfg.seed < 0:
        raise RecipeError(f"{source}: search.seed={cfg.seed}: must be a non-negative integer")
    if cfg.storage is not None and not cfg.storage.strip():
        raise RecipeError(f"{source}: search.storage={cfg.storage!r}: must be an Optuna storage URL or null")


def _check_sampler(cfg: SearchConfig, source: str) -> None:
    from llmnas.samplers.factory import SAMPLERS, sampler_options

    if cfg.sampler not in SAMPLERS:
        raise RecipeError(f"{source}: search.sampler={cfg.sampler!r}: not allowed (allowed: {', '.join(SAMPLERS)})")
    allowed = sampler_options(cfg.sampler)
    for key in cfg.sampler_options:
        if key not in allowed:
            raise RecipeError(
                f"{source}: search.sampler_options.{key}: sampler {cfg.sampler!r} has no such option "
                f"(allowed: {', '.join(allowed) or 'none'})"
            )


def _constraints(values: dict[str, Any], source: str) -> dict[str, int]:
    out = {}
    for key, value in values.items():
        if key not in CONSTRAINT_KEYS:
            allowed = ", ".join(CONSTRAINT_KEYS)
            raise RecipeError(f"{source}: search.constraints.{key}: unknown key (allowed: {allowed})")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 8e5 reads as a float
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RecipeError(f"{source}: search.constraints.{key}={value!r}: must be a positive integer")
        out[key] = value
    if out.get("min_params", 0) > out.get("max_params", math.inf):
        raise RecipeError(
            f"{source}: search.constraints.min_params={out['min_params']}: must be <= max_params={out['max_params']}"
        )
    return out
