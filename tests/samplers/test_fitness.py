from __future__ import annotations

import numpy as np
import pytest

from llmnas.samplers._base import Observation
from llmnas.samplers._fitness import chebyshev, crowding_distance, normal_scores, pareto_ranks, utilities


def brute_force_ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.full(len(values), -1)
    remaining = set(range(len(values)))
    r = 0
    while remaining:
        front = [i for i in remaining
                 if not any((values[j] >= values[i]).all() and (values[j] > values[i]).any() for j in remaining)]
        for i in front:
            ranks[i] = r
        remaining -= set(front)
        r += 1
    return ranks


def test_pareto_ranks_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = rng.integers(0, 5, size=(30, int(rng.integers(1, 4)))).astype(float)
        np.testing.assert_array_equal(pareto_ranks(values), brute_force_ranks(values))


def test_crowding_distance_extremes_are_infinite() -> None:
    d = crowding_distance(np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0]]))
    assert np.isinf(d[0]) and np.isinf(d[3]) and d[1] == pytest.approx(d[2]) and np.isfinite(d[1])


def test_utilities_put_infeasible_last_and_use_weights() -> None:
    obs = [Observation(0, {}, (1.0, 5.0)), Observation(1, {}, (3.0, 1.0)), Observation(2, {}, (9.0, 9.0), 2.0),
           Observation(3, {}, (0.0, 0.0)), Observation(4, {}, (9.0, 9.0), 0.5)]
    u = utilities(obs)
    assert u[0] == u[0] and min(u[0], u[1]) > u[3] > u[4] > u[2]
    w = utilities(obs, weights=[1.0, 1.0])
    assert w[0] == 6.0 and w[1] == 4.0 and w[2] < w[3]


def test_normal_scores_are_rank_based_with_shared_ties() -> None:
    z = normal_scores(np.array([10.0, -1e9, 3.0, 3.0, 50.0]))
    assert z[1] < z[2] == z[3] < z[0] < z[4]
    assert abs(normal_scores(np.array([4.0, 1.0, 9.0, 2.0])).sum()) < 1e-9  # symmetric without ties


def test_chebyshev_prefers_balanced_points_under_equal_weights() -> None:
    v = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]])
    s = chebyshev(v, np.array([0.5, 0.5]))
    assert s.argmax() == 2
