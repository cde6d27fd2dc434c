"""Samplers for architecture search, written as Optuna samplers.

- :class:`RegularizedEvolutionSampler` -- aging evolution with tournament selection (``evolution``).
- :class:`ReinforceSampler` -- REINFORCE over the decisions, policy kept in the study (``reinforce``).
- :class:`ThompsonSampler` -- Thompson sampling from a Bayesian additive model (``thompson``).
- :func:`build_sampler` -- any of them, or Optuna's ``random``/``tpe``/``nsga2``/``gp``, by recipe name.

All take an optional :class:`~llmnas.space.base.CategoricalSpace`; they work with ``study.optimize``,
ask/tell, any storage, several worker processes and resumed studies.
"""

from __future__ import annotations

from llmnas.samplers.evolution import RegularizedEvolutionSampler
from llmnas.samplers.factory import SAMPLERS, build_sampler, sampler_options
from llmnas.samplers.reinforce import ReinforceSampler
from llmnas.samplers.thompson import ThompsonSampler

__all__ = [
    "SAMPLERS",
    "RegularizedEvolutionSampler",
    "ReinforceSampler",
    "ThompsonSampler",
    "build_sampler",
    "sampler_options",
]
