"""What the llmnas samplers share: the decisions they sample, the history they read, their randomness.

Every llmnas sampler proposes all the categorical decisions of a trial at once (relative sampling)
from what the study records, so it works with any storage, several worker processes and resumed
studies: nothing it needs lives only in the sampler object.

- **Decisions.** With a :class:`~llmnas.space.base.CategoricalSpace` the decisions are the space's
  (its distributions, ``active``, ``key``, ``is_feasible``, ``mutate_params``, ``neighbours``).
  Without one, the decisions are inferred from the study like NSGA-II does (the intersection of the
  completed trials' distributions); each categorical (or small integer) parameter is one decision and
  the candidate is the parameter set itself. Parameters outside the decisions are sampled at random.
- **History.** :class:`History` reads the study once per trial: the completed trials (objective values
  turned into "larger is better", constraint violations) and the keys of every trial already asked
  (complete, running, pruned, failed or enqueued), which are never proposed again.
- **Randomness.** Each trial draws from ``numpy.random.default_rng([seed, trial.number])``: a fixed seed
  gives the same sequence of trials, and workers sharing a seed still propose different candidates.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from llmnas.errors import SpaceError
from llmnas.space.base import CategoricalSpace, Params

if TYPE_CHECKING:
    from optuna.study import Study

#: Integer parameters with at most this many values are treated as categorical decisions.
MAX_INT_CHOICES = 1024


@dataclass(frozen=True)
class Observation:
    """A completed trial as the samplers see it.

    Attributes:
        number: the trial number.
        params: the trial's values of the decisions.
        values: objective values oriented so that larger is better (``minimize`` objectives negated).
        violation: total constraint violation (sum of positive constraint values; 0 when feasible).
    """

    number: int
    params: Params
    values: tuple[float, ...]
    violation: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.violation <= 0.0


@dataclass
class History:
    """What the study has recorded, read once per proposal.

    Attributes:
        observations: completed trials with every decision and finite values, by trial number.
        seen: keys of every other trial that has (or is enqueued with) all decisions, whatever its state.
    """

    observations: list[Observation]
    seen: set[str]

    @classmethod
    def from_study(cls, study: Study, space: CategoricalSpace, exclude: int | None = None) -> History:
        names = list(space.choices())
        signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
        observations: list[Observation] = []
        seen: set[str] = set()
        for t in study.get_trials(deepcopy=False):
            if t.number == exclude:
                continue
            params = t.params
            if t.state == TrialState.WAITING:
                params = {**t.system_attrs.get("fixed_params", {}), **params}
            if any(n not in params for n in names):
                continue
            p = {n: params[n] for n in names}
            try:
                seen.add(space.key(p))
            except (ValueError, KeyError):  # recorded with choices the space no longer has
                continue
            if t.state != TrialState.COMPLETE or t.values is None:
                continue
            values = tuple(s * v for s, v in zip(signs, t.values, strict=True))
            if not all(math.isfinite(v) for v in values):
                continue
            violation = sum(max(float(c), 0.0) for c in t.constraints.values())
            observations.append(Observation(t.number, p, values, violation))
        observations.sort(key=lambda o: o.number)
        return cls(observations, seen)


class DecisionSpace(CategoricalSpace[dict]):
    """The decisions inferred from a study's distributions; a candidate is its parameter set."""

    def __init__(self, distributions: dict[str, BaseDistribution]) -> None:
        self.name = "inferred"
        self._choices: dict[str, tuple[Any, ...]] = {}
        for name, d in distributions.items():
            if isinstance(d, CategoricalDistribution):
                self._choices[name] = tuple(d.choices)
            elif isinstance(d, IntDistribution):
                self._choices[name] = tuple(range(d.low, d.high + 1, d.step))

    def choices(self) -> dict[str, tuple[Any, ...]]:
        return self._choices

    def decode(self, params: Params) -> dict:
        return {n: params[n] for n in self._choices}

    def encode(self, candidate: dict) -> Params:
        return dict(candidate)

    def key(self, params: Params) -> str:
        return repr(tuple(params[n] for n in self._choices))


def decision_distributions(distributions: dict[str, BaseDistribution]) -> dict[str, BaseDistribution]:
    """The distributions an inferred space treats as decisions: categorical and small integer ones."""
    out: dict[str, BaseDistribution] = {}
    for name, d in distributions.items():
        if d.single():
            continue
        small_int = isinstance(d, IntDistribution) and not d.log and (d.high - d.low) // d.step < MAX_INT_CHOICES
        if isinstance(d, CategoricalDistribution) or small_int:
            out[name] = d
    return out


def new_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**63))


class SpaceSampler(BaseSampler, abc.ABC):
    """Base class of the llmnas samplers: decisions, history and per-trial randomness.

    Subclasses implement :meth:`propose`.

    Args:
        space: the search space whose decisions are sampled; ``None`` infers them from the study.
        seed: seed of the random number generator; ``None`` draws one.
        weights: for multi-objective studies, weights of a weighted sum of the objectives (oriented so
            that larger is better) used instead of the sampler's own multi-objective rule.
        avoid_repeats: never propose a candidate (by the space's key) that an earlier trial already has;
            ``False`` only for ablations.
    """

    def __init__(
        self,
        *,
        space: CategoricalSpace | None = None,
        seed: int | None = None,
        weights: Sequence[float] | None = None,
        avoid_repeats: bool = True,
    ) -> None:
        if space is not None and not isinstance(space, CategoricalSpace):
            raise TypeError(f"space must be a CategoricalSpace, got {type(space).__name__}")
        self._space = space
        self._seed = new_seed() if seed is None else int(seed)
        self._random_sampler = RandomSampler(seed=seed)
        self._intersection = IntersectionSearchSpace()
        self._weights = None if weights is None else tuple(float(w) for w in weights)
        self.avoid_repeats = avoid_repeats

    @property
    def space(self) -> CategoricalSpace | None:
        return self._space

    def reseed_rng(self) -> None:
        self._seed = new_seed()
        self._random_sampler.reseed_rng()

    def trial_rng(self, number: int) -> np.random.Generator:
        """The generator of trial ``number``: a function of the seed and the number only."""
        return np.random.default_rng([self._seed, number])

    # ------------------------------------------------------------------ optuna.samplers.BaseSampler
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._space is not None:
            return dict(self._space.distributions())
        return decision_distributions(self._intersection.calculate(study))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        space = self._space if self._space is not None else DecisionSpace(search_space)
        if self._weights is not None and len(self._weights) != len(study.directions):
            raise ValueError(
                f"{type(self).__name__}: {len(self._weights)} weights given for {len(study.directions)} objectives"
            )
        history = History.from_study(study, space, exclude=trial.number)
        if not self.avoid_repeats:
            history.seen = set()
        return dict(self.propose(study, trial, space, history, self.trial_rng(trial.number)))

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._random_sampler.before_trial(study, trial)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._random_sampler.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def propose(
        self,
        study: Study,
        trial: FrozenTrial,
        space: CategoricalSpace,
        history: History,
        rng: np.random.Generator,
    ) -> Params:
        """All decisions of ``trial``: a feasible candidate whose key is not in ``history.seen``."""

    def random_unseen(self, space: CategoricalSpace, seen: set[str], rng: np.random.Generator) -> Params:
        """A uniformly random feasible candidate not yet asked (any one once the space is exhausted)."""
        params = space.sample_params(rng)
        for _ in range(space.max_tries):
            if space.key(params) not in seen:
                return params
            params = space.sample_params(rng)
        return params

    def unseen_mutation(
        self, space: CategoricalSpace, parent: Params, seen: set[str], rng: np.random.Generator, tries: int = 20
    ) -> Params | None:
        """A feasible candidate one active decision away from ``parent`` and not yet asked, if any."""
        for _ in range(tries):
            try:
                child = space.mutate_params(parent, rng)
            except SpaceError:  # the constraints leave the parent isolated: the caller looks elsewhere
                return None
            if space.key(child) not in seen:
                return child
        fresh = [p for p in space.neighbours(parent) if space.key(p) not in seen]
        return fresh[int(rng.integers(len(fresh)))] if fresh else None
