"""Build a sampler from a recipe's name and options.

Names: Optuna's own ``random``, ``tpe``, ``nsga2``, ``gp`` and llmnas's ``evolution``
(:class:`RegularizedEvolutionSampler`), ``reinforce`` (:class:`ReinforceSampler`) and ``thompson``
(:class:`ThompsonSampler`). ``options`` are the keyword arguments of the sampler's constructor (except
``seed`` and ``space``, which come from their own arguments); an unknown name or option is a
:class:`~llmnas.errors.RecipeError` that lists what is allowed.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from llmnas.errors import RecipeError
from llmnas.samplers.evolution import RegularizedEvolutionSampler
from llmnas.samplers.reinforce import ReinforceSampler
from llmnas.samplers.thompson import ThompsonSampler
from llmnas.space.base import CategoricalSpace

#: Samplers by recipe name: (constructor, takes a ``space``, one-line description).
SAMPLERS: dict[str, tuple[Callable[..., optuna.samplers.BaseSampler], bool, str]] = {
    "random": (optuna.samplers.RandomSampler, False, "Optuna's uniform random sampling"),
    "tpe": (optuna.samplers.TPESampler, False, "Optuna's tree-structured Parzen estimator"),
    "nsga2": (optuna.samplers.NSGAIISampler, False, "Optuna's NSGA-II genetic algorithm"),
    "gp": (optuna.samplers.GPSampler, False, "Optuna's Gaussian-process Bayesian optimisation (needs scipy)"),
    "evolution": (RegularizedEvolutionSampler, True, "regularized (aging) evolution, Real et al. 2019"),
    "reinforce": (ReinforceSampler, True, "REINFORCE policy gradient, Zoph & Le 2017 / ENAS"),
    "thompson": (ThompsonSampler, True, "Thompson sampling from a Bayesian additive model"),
}
DIRECTIONS = ("minimize", "maximize")


def sampler_options(name: str) -> list[str]:
    """The options (constructor keywords) that sampler ``name`` accepts."""
    ctor = SAMPLERS[name][0]
    return [p for p in inspect.signature(ctor).parameters if p not in ("self", "seed", "space")]


def build_sampler(
    name: str,
    *,
    space: CategoricalSpace | None,
    directions: Sequence[str],
    seed: int | None,
    options: dict[str, Any] | None = None,
) -> optuna.samplers.BaseSampler:
    """Build the sampler a recipe names.

    Args:
        name: one of :data:`SAMPLERS`.
        space: the search space; the llmnas samplers use its decisions, keys, ``active``, mutations and
            feasibility (Optuna's own samplers read the study and ignore it). ``None``: the llmnas samplers
            infer the decisions from the study.
        directions: the study's directions (``minimize``/``maximize``), to check options against.
        seed: seed of the sampler (``None``: not reproducible).
        options: constructor keywords of the sampler, e.g. ``{"population_size": 20}``.

    Raises:
        RecipeError: unknown name or option, an option value the sampler rejects, or a missing dependency.
    """
    options = dict(options or {})
    if name not in SAMPLERS:
        raise RecipeError(f"unknown sampler {name!r} (allowed: {', '.join(SAMPLERS)})")
    for d in directions:
        if d not in DIRECTIONS:
            raise RecipeError(f"unknown direction {d!r} (allowed: {', '.join(DIRECTIONS)})")
    ctor, takes_space, _ = SAMPLERS[name]
    allowed = sampler_options(name)
    for key in options:
        if key not in allowed:
            raise RecipeError(
                f"sampler {name!r} has no option {key!r} (allowed: {', '.join(allowed) or 'none'})"
            )
    weights = options.get("weights")
    if weights is not None and (
        not isinstance(weights, (list, tuple)) or len(weights) != len(directions)
    ):
        raise RecipeError(f"sampler {name!r}: weights must list one number per objective ({len(directions)})")
    if name == "gp" and importlib.util.find_spec("scipy") is None:
        raise RecipeError("sampler 'gp' (Optuna's GPSampler) needs scipy: pip install scipy")
    kwargs = {**options, "seed": seed}
    if takes_space:
        kwargs["space"] = space
    try:
        return ctor(**kwargs)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"sampler {name!r}: {e}") from None
