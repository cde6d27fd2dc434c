"""Turning recorded objective values into what a sampler compares: utilities, Pareto ranks, quantiles.

All functions take values oriented so that larger is better (see
:class:`~llmnas.samplers._base.Observation`). Infeasible trials (a positive constraint violation) always
rank below feasible ones, and among themselves by smaller violation.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from llmnas.samplers._base import Observation


def pareto_ranks(values: np.ndarray) -> np.ndarray:
    """Non-dominated sorting of ``values`` (n, k), larger is better: 0 for the first front, 1 for the next..."""
    n = len(values)
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    ge = (values[:, None, :] >= values[None, :, :]).all(-1)
    gt = (values[:, None, :] > values[None, :, :]).any(-1)
    dominates = ge & gt  # dominates[i, j]: i dominates j
    n_dominating = dominates.sum(0)
    front = np.flatnonzero(n_dominating == 0)
    rank = 0
    while len(front):
        ranks[front] = rank
        n_dominating = n_dominating - dominates[front].sum(0)
        n_dominating[ranks >= 0] = -1
        front = np.flatnonzero(n_dominating == 0)
        rank += 1
    return ranks


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of points on one front (larger is less crowded; extremes are inf)."""
    n, k = values.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(k):
        order = np.argsort(values[:, j], kind="stable")
        span = values[order[-1], j] - values[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (values[order[2:], j] - values[order[:-2], j]) / span
    return dist


def scalar_values(observations: Sequence[Observation], weights: Sequence[float] | None) -> np.ndarray:
    """One value per observation: the objective (single-objective) or the weighted sum of the objectives."""
    values = np.array([o.values for o in observations], dtype=float).reshape(len(observations), -1)
    if weights is not None:
        return values @ np.asarray(weights, dtype=float)
    if values.shape[1] != 1:
        raise ValueError("a multi-objective study needs weights for a scalar value")
    return values[:, 0]


def utilities(observations: Sequence[Observation], weights: Sequence[float] | None = None) -> np.ndarray:
    """A score per observation, larger is better, equal for equally good observations.

    Single-objective (or with ``weights``): the scalar value. Multi-objective: minus the Pareto rank,
    plus a tie-break in ``[0, 0.5]`` growing with the crowding distance. Infeasible observations score
    below every feasible one, ordered by smaller violation.
    """
    n = len(observations)
    if n == 0:
        return np.zeros(0)
    feasible = np.array([o.feasible for o in observations])
    values = np.array([o.values for o in observations], dtype=float).reshape(n, -1)
    score = np.zeros(n)
    idx = np.flatnonzero(feasible)
    if len(idx):
        if values.shape[1] == 1 or weights is not None:
            score[idx] = scalar_values([observations[i] for i in idx], weights)
        else:
            ranks = pareto_ranks(values[idx])
            for r in np.unique(ranks):
                on = idx[ranks == r]
                cd = crowding_distance(values[on])
                tie = 0.5 * (1.0 - 1.0 / (1.0 + np.where(np.isinf(cd), 1e9, cd)))
                score[on] = -float(r) + tie
    bad = np.flatnonzero(~feasible)
    if len(bad):
        floor = score[idx].min() - 1.0 if len(idx) else 0.0
        violation = np.array([observations[i].violation for i in bad])
        score[bad] = floor - violation / (1.0 + violation.max())
    return score


def normal_scores(x: np.ndarray) -> np.ndarray:
    """Gaussian quantiles of the average ranks of ``x`` (a rank-based "copula" transform; ties share one)."""
    n = len(x)
    if n == 0:
        return np.zeros(0)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=float)
    sorted_x = x[order]
    start = 0
    for i in range(1, n + 1):  # average the ranks of ties
        if i == n or sorted_x[i] != sorted_x[start]:
            ranks[order[start:i]] = (start + i - 1) / 2.0
            start = i
    inv = NormalDist().inv_cdf
    return np.array([inv((r + 0.5) / n) for r in ranks])


def chebyshev(values: np.ndarray, lam: np.ndarray, rho: float = 0.05) -> np.ndarray:
    """ParEGO's augmented Chebyshev scalarisation of ``values`` (n, k), larger is better.

    Each objective is scaled to [0, 1] over the observations; the score is
    ``min_k lam_k * v_k + rho * sum_k lam_k * v_k``.
    """
    lo, hi = values.min(0), values.max(0)
    scaled = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    weighted = scaled * lam
    return weighted.min(1) + rho * weighted.sum(1)
