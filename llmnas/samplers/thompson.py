"""Thompson sampling from a Bayesian additive model of the decisions.

After ``n_startup_trials`` random trials, every new trial

1. turns the completed trials' objective values into normal scores (Gaussian quantiles of their ranks),
   which removes the scale of the objective and the pull of outliers (diverged or disconnected models);
2. fits a Bayesian linear regression of those scores on the one-hot encoding of the *active* decisions
   (prior ``N(0, prior)`` on every weight, noise variance ``noise``) -- an additive model: one weight per
   (decision, choice);
3. draws one weight vector from the posterior and proposes the candidate that maximises it among those
   never asked (best-first search from the per-decision argmax through one-decision changes, which
   visits an additive score's candidates in decreasing order).

Drawing from the posterior balances exploring poorly known choices against exploiting good ones. The
model is cheap (one small linear solve per trial), works on any categorical space and does not need the
space to be enumerable. Multi-objective studies scalarise with ParEGO's augmented Chebyshev function
under weights drawn afresh for each trial (or with fixed ``weights``); infeasible trials rank last.

On NAS-Bench-201 (100 evaluations) this is the strongest llmnas sampler; see ``eval/README.md``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llmnas.samplers._base import History, Observation, SpaceSampler
from llmnas.samplers._fitness import chebyshev, normal_scores, utilities
from llmnas.space.base import CategoricalSpace, Params

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


class ThompsonSampler(SpaceSampler):
    """Thompson sampling with a Bayesian additive (one-hot linear) model on rank-normalised values.

    Example:
        .. code-block:: python

            import optuna
            from llmnas.samplers import ThompsonSampler

            def objective(trial):
                width = trial.suggest_categorical("width", [64, 128, 256])
                act = trial.suggest_categorical("act", ["gelu", "relu", "swiglu"])
                return train_and_evaluate(width, act)

            study = optuna.create_study(sampler=ThompsonSampler(seed=0))
            study.optimize(objective, n_trials=30)

    Args:
        space: the search space (``None`` infers the decisions from the study's trials).
        n_startup_trials: completed trials sampled at random before the model is used (20: the choice of
            the validation-scored sweep in ``eval/nasbench201/results/ablations/choice.md``, made at 100
            evaluations; for a budget of a few dozen trials use about a fifth of it).
        noise: noise variance of the regression, in units of the normal scores (variance 1).
        prior: prior variance of each (decision, choice) weight.
        max_expansions: candidates the best-first search may visit before falling back to random.
        seed: seed of the random number generator.
        weights: fixed weighted-sum scalarisation of several objectives (instead of random Chebyshev).
        avoid_repeats: never propose an already-asked candidate (``False`` only for ablations).
    """

    def __init__(
        self,
        *,
        space: CategoricalSpace | None = None,
        n_startup_trials: int = 20,
        noise: float = 0.3,
        prior: float = 1.0,
        max_expansions: int = 2000,
        seed: int | None = None,
        weights: Sequence[float] | None = None,
        avoid_repeats: bool = True,
    ) -> None:
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1, got {n_startup_trials}")
        if noise <= 0 or prior <= 0:
            raise ValueError(f"noise and prior must be positive, got noise={noise}, prior={prior}")
        super().__init__(space=space, seed=seed, weights=weights, avoid_repeats=avoid_repeats)
        self.n_startup_trials = n_startup_trials
        self.noise = float(noise)
        self.prior = float(prior)
        self.max_expansions = max_expansions

    def propose(
        self,
        study: Study,
        trial: FrozenTrial,
        space: CategoricalSpace,
        history: History,
        rng: np.random.Generator,
    ) -> Params:
        observations = history.observations
        if len(observations) < self.n_startup_trials:
            return self.random_unseen(space, history.seen, rng)
        targets = normal_scores(self._scalar(observations, rng))
        encoder = _OneHot(space)
        features = np.stack([encoder(o.params) for o in observations])
        weights = self._posterior_draw(features, targets, rng)
        params = _best_unseen(space, encoder, weights, history.seen, self.max_expansions)
        return params if params is not None else self.random_unseen(space, history.seen, rng)

    def _scalar(self, observations: list[Observation], rng: np.random.Generator) -> np.ndarray:
        n_objectives = len(observations[0].values)
        if n_objectives == 1 or self._weights is not None:
            return utilities(observations, self._weights)
        values = np.array([o.values for o in observations])
        lam = rng.dirichlet(np.ones(n_objectives))
        scalar = chebyshev(values, lam)
        pairs = zip(observations, scalar, strict=True)
        return utilities([Observation(o.number, o.params, (s,), o.violation) for o, s in pairs])

    def _posterior_draw(self, features: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        precision = features.T @ features / self.noise + np.eye(features.shape[1]) / self.prior
        chol = np.linalg.cholesky(precision)
        mean = np.linalg.solve(chol.T, np.linalg.solve(chol, features.T @ (targets - targets.mean()) / self.noise))
        return mean + np.linalg.solve(chol.T, rng.standard_normal(len(mean)))


class _OneHot:
    """One column per (decision, choice); the decisions a candidate leaves inactive stay zero."""

    def __init__(self, space: CategoricalSpace) -> None:
        self.space = space
        self.choices = space.choices()
        self.offset: dict[str, int] = {}
        self.index: dict[str, dict] = {}
        n = 0
        for name, ch in self.choices.items():
            self.offset[name] = n
            self.index[name] = {_hashable(c): i for i, c in enumerate(ch)}
            n += len(ch)
        self.size = n

    def columns(self, params: Params) -> list[int]:
        return [self.offset[n] + self.index[n][_hashable(params[n])] for n in self.space.active(params)]

    def __call__(self, params: Params) -> np.ndarray:
        x = np.zeros(self.size)
        x[self.columns(params)] = 1.0
        return x


def _hashable(value: object) -> object:
    return (type(value).__name__, value)


def _best_unseen(
    space: CategoricalSpace, encoder: _OneHot, weights: np.ndarray, seen: set[str], max_expansions: int
) -> Params | None:
    def score(p: Params) -> float:
        return float(weights[encoder.columns(p)].sum())

    choices = encoder.choices
    start = {}
    for name, ch in choices.items():
        block = weights[encoder.offset[name] : encoder.offset[name] + len(ch)]
        start[name] = ch[int(np.argmax(block))]
    heap = [(-score(start), 0, start)]
    visited = {space.key(start)}
    count = 1
    while heap and count <= max_expansions:
        _, _, params = heapq.heappop(heap)
        if space.key(params) not in seen and space.is_feasible(params):
            return params
        for name, ch in choices.items():
            for value in ch:
                if value == params[name]:
                    continue
                child = {**params, name: value}
                k = space.key(child)
                if k in visited:
                    continue
                visited.add(k)
                count += 1
                heapq.heappush(heap, (-score(child), count, child))
    return None
