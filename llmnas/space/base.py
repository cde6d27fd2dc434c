"""What every search space offers the samplers and the search engine.

A space is a fixed, ordered set of categorical decisions (Optuna parameters with the same names and
choices whatever the candidate), a ``decode`` from decisions to a candidate (an
:class:`~llmnas.space.arch.Architecture`, a NAS-Bench-201 cell, ...), and a canonical ``key`` of the
candidate, so that two decision sets that build the same candidate are recognised as one.

Samplers only use this interface, so the same evolution and REINFORCE samplers run on transformer
spaces and on cell spaces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import numpy as np
import optuna
from optuna.distributions import CategoricalChoiceType, CategoricalDistribution

from llmnas.errors import SpaceError

C = TypeVar("C")
Params = dict[str, CategoricalChoiceType]
RngLike = np.random.Generator | int | None


def as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class CategoricalSpace(ABC, Generic[C]):
    """A search space of categorical decisions; subclasses say how decisions build a candidate.

    Subclasses implement :meth:`choices`, :meth:`decode`, :meth:`encode` and may refine
    :meth:`active`, :meth:`key` and :meth:`is_feasible`.
    """

    name: str = "space"
    #: How many times sampling or mutation retries to find a feasible, new candidate.
    max_tries: int = 1000

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def choices(self) -> dict[str, tuple[CategoricalChoiceType, ...]]:
        """Every decision, in a fixed order, with its choices. The same for every candidate."""

    @abstractmethod
    def decode(self, params: Params) -> C:
        """Build the candidate that a full set of decisions describes."""

    @abstractmethod
    def encode(self, candidate: C) -> Params:
        """Decisions that decode to ``candidate`` (one of them, where several do)."""

    def key(self, params: Params) -> str:
        """Canonical identity of the candidate the decisions build."""
        return str(self.decode(params))

    def active(self, params: Params) -> list[str]:
        """Decisions whose change can change the candidate (all of them unless refined)."""
        return list(self.choices())

    def is_feasible(self, params: Params) -> bool:
        """Whether the candidate meets the space's hard constraints (always, unless refined)."""
        return True

    def check_feasible(self) -> C | None:
        """Raise :class:`~llmnas.errors.SpaceError` if no candidate meets the hard constraints; else return
        one that does (``None`` when there are no constraints). Spaces with constraints refine it."""
        return None

    # ------------------------------------------------------------------ derived
    def distributions(self) -> dict[str, CategoricalDistribution]:
        return {name: CategoricalDistribution(list(ch)) for name, ch in self.choices().items()}

    def suggest(self, trial: optuna.Trial) -> C:
        """Ask ``trial`` for every decision (fixed names, whatever the depth) and decode them."""
        params = {name: trial.suggest_categorical(name, list(ch)) for name, ch in self.choices().items()}
        return self.decode(params)

    def sample_params(self, rng: RngLike = None) -> Params:
        """Uniformly random decisions whose candidate is feasible."""
        rng = as_rng(rng)
        choices = self.choices()
        for _ in range(self.max_tries):
            params = {name: ch[int(rng.integers(len(ch)))] for name, ch in choices.items()}
            if self.is_feasible(params):
                return params
        raise SpaceError(
            f"{self.name}: no candidate meeting the constraints found in {self.max_tries} random draws "
            "(loosen the constraints)"
        )

    def sample(self, rng: RngLike = None) -> C:
        return self.decode(self.sample_params(rng))

    def neighbours(self, params: Params) -> Iterator[Params]:
        """Every feasible candidate that differs in exactly one active decision (one per new key)."""
        seen = {self.key(params)}
        choices = self.choices()
        for name in self.active(params):
            for value in choices[name]:
                if value == params[name]:
                    continue
                new = {**params, name: value}
                k = self.key(new)
                if k not in seen and self.is_feasible(new):
                    seen.add(k)
                    yield new

    def mutate_params(self, params: Params, rng: RngLike = None) -> Params:
        """Change one active decision so that the candidate changes and stays feasible.

        Raises:
            SpaceError: no feasible candidate differs from ``params`` in one decision.
        """
        rng = as_rng(rng)
        choices = self.choices()
        old = self.key(params)
        active = self.active(params)
        for _ in range(self.max_tries):
            name = active[int(rng.integers(len(active)))]
            options = [v for v in choices[name] if v != params[name]]
            if not options:
                continue
            new = {**params, name: options[int(rng.integers(len(options)))]}
            if self.key(new) != old and self.is_feasible(new):
                return new
        # tight constraints: look at every neighbour before giving up
        fresh = list(self.neighbours(params))
        if fresh:
            return fresh[int(rng.integers(len(fresh)))]
        raise SpaceError(
            f"{self.name}: no candidate one decision away from {old} meets the constraints (they leave it isolated; "
            "loosen them)"
        )

    def mutate(self, candidate: C, rng: RngLike = None) -> C:
        """A candidate that differs from ``candidate`` in one decision; always valid and feasible."""
        return self.decode(self.mutate_params(self.encode(candidate), rng))

    def size(self) -> int:
        """Number of distinct candidates (before hard constraints); subclasses may count smarter."""
        n = 1
        for ch in self.choices().values():
            n *= len(ch)
        return n

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "decisions": {k: list(v) for k, v in self.choices().items()}}
