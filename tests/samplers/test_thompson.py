from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest

from llmnas.samplers import ThompsonSampler
from llmnas.samplers.thompson import _best_unseen, _OneHot
from llmnas.space.nb201 import NB201Space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_best_first_search_returns_the_best_unseen_candidate_of_an_additive_score() -> None:
    space = NB201Space(ops=("none", "skip_connect", "nor_conv_3x3"), identify_isomorphic=False)
    encoder = _OneHot(space)
    rng = np.random.default_rng(0)
    names, ops = list(space.choices()), space.ops
    every = [dict(zip(names, combo, strict=True)) for combo in itertools.product(ops, repeat=len(names))]
    for _ in range(5):
        w = rng.standard_normal(encoder.size)
        scores = {space.key(p): float(w[encoder.columns(p)].sum()) for p in every}
        ranked = sorted(scores, key=scores.get, reverse=True)
        seen = set(ranked[:7])
        found = _best_unseen(space, encoder, w, seen, max_expansions=10_000)
        assert scores[space.key(found)] == pytest.approx(scores[ranked[7]])


def test_best_first_search_with_isomorphic_keys_returns_an_unseen_candidate() -> None:
    space = NB201Space()
    encoder = _OneHot(space)
    w = np.random.default_rng(1).standard_normal(encoder.size)
    seen: set[str] = set()
    for _ in range(50):
        found = _best_unseen(space, encoder, w, seen, max_expansions=10_000)
        assert space.key(found) not in seen
        seen.add(space.key(found))


def test_one_hot_leaves_inactive_decisions_out() -> None:
    space = NB201Space()
    enc = _OneHot(space)
    params = dict.fromkeys(space.choices(), "nor_conv_3x3")
    params["node1.in0"] = "none"  # node 1 is zero: the edges out of it are inactive
    x = enc(params)
    assert x.sum() == len(space.active(params)) == 4
    assert enc(dict.fromkeys(space.choices(), "nor_conv_3x3")).sum() == 6


def test_startup_trials_are_random_then_the_model_moves_to_the_best_region() -> None:
    space = NB201Space()
    score = {"nor_conv_3x3": 3.0, "nor_conv_1x1": 2.0, "skip_connect": 1.0, "avg_pool_3x3": 0.5, "none": 0.0}
    study = optuna.create_study(direction="maximize", sampler=ThompsonSampler(space=space, n_startup_trials=5, seed=0))
    study.optimize(lambda t: sum(score[o] for o in space.suggest(t).ops), n_trials=30)
    values = [t.value for t in study.trials]
    assert study.best_value >= 16.0 and np.mean(values[5:]) > np.mean(values[:5]) + 2.0  # optimum: 18


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="n_startup_trials"):
        ThompsonSampler(n_startup_trials=0)
    with pytest.raises(ValueError, match="positive"):
        ThompsonSampler(noise=0.0)


def test_default_startup_is_the_tuning_sweeps_choice() -> None:
    # eval/nasbench201/results/ablations/choice.md: seeds 1000-1099, validation signal only
    assert ThompsonSampler().n_startup_trials == 20 and ThompsonSampler().noise == 0.3 and ThompsonSampler().prior == 1
