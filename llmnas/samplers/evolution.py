"""Regularized evolution (Real et al., 2019, "Regularized Evolution for Image Classifier Architecture Search").

The population is the ``population_size`` most recent completed trials of the study (by trial number),
so it is the same for every worker process and for a resumed study, and the oldest member leaves when
a new one completes ("aging"). Each new trial picks ``sample_size`` members at random, takes the best
as the parent and changes one of its active decisions; a child that was already asked (by any worker,
in any state) is never proposed again. Until the population is full, trials are random.

Single-objective studies compare the objective; multi-objective studies compare the Pareto rank within
the population, then the crowding distance, unless ``weights`` ask for a weighted sum. Infeasible trials
(positive constraint values) lose against feasible ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llmnas.samplers._base import History, SpaceSampler
from llmnas.samplers._fitness import utilities
from llmnas.space.base import CategoricalSpace, Params

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


class RegularizedEvolutionSampler(SpaceSampler):
    """Aging evolution with tournament selection and one-decision mutations.

    Example:
        .. code-block:: python

            import optuna
            from llmnas.samplers import RegularizedEvolutionSampler
            from llmnas.space.nb201 import NB201Space

            space = NB201Space()
            sampler = RegularizedEvolutionSampler(space=space, population_size=20, sample_size=5, seed=0)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.optimize(lambda t: evaluate(space.suggest(t)), n_trials=100)

    Args:
        space: the search space (``None`` infers the decisions from the study's trials).
        population_size: number of most recent completed trials that form the population.
        sample_size: number of members drawn for each tournament (at most ``population_size``).
        seed: seed of the random number generator.
        weights: weighted-sum scalarisation of several objectives (instead of the Pareto rank).
        avoid_repeats: never propose an already-asked candidate (``False`` only for ablations).
    """

    def __init__(
        self,
        *,
        space: CategoricalSpace | None = None,
        population_size: int = 30,
        sample_size: int = 15,
        seed: int | None = None,
        weights: Sequence[float] | None = None,
        avoid_repeats: bool = True,
    ) -> None:
        if population_size < 2:
            raise ValueError(f"population_size must be at least 2, got {population_size}")
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"sample_size must be in 1..population_size ({population_size}), got {sample_size}")
        super().__init__(space=space, seed=seed, weights=weights, avoid_repeats=avoid_repeats)
        self.population_size = population_size
        self.sample_size = sample_size

    def propose(
        self,
        study: Study,
        trial: FrozenTrial,
        space: CategoricalSpace,
        history: History,
        rng: np.random.Generator,
    ) -> Params:
        population = history.observations[-self.population_size :]
        if len(population) < self.population_size:
            return self.random_unseen(space, history.seen, rng)
        score = utilities(population, self._weights)
        contestants = rng.choice(len(population), size=self.sample_size, replace=False)
        parent = population[int(contestants[np.argmax(score[contestants])])]
        child = self.unseen_mutation(space, parent.params, history.seen, rng)
        return child if child is not None else self.random_unseen(space, history.seen, rng)
