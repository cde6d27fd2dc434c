from __future__ import annotations

import numpy as np
import optuna
import pytest

from llmnas.samplers import ReinforceSampler
from llmnas.samplers._policy import IndependentPolicy, LSTMPolicy
from llmnas.samplers.reinforce import STATE_KEY, _ranges, _unranges
from llmnas.space.nb201 import OPS, NB201Space

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = NB201Space()
GOOD = {"nor_conv_3x3": 3.0, "nor_conv_1x1": 2.0, "skip_connect": 1.0, "avg_pool_3x3": 0.5, "none": 0.0}


def objective(trial: optuna.Trial) -> float:
    cell = SPACE.suggest(trial)
    return sum(GOOD[o] for o in cell.ops)


def stored_state(study: optuna.Study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)[STATE_KEY]


def test_policy_is_stored_in_the_study_and_covers_every_completed_trial(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'rl.db'}"
    study = optuna.create_study(study_name="rl", storage=url, direction="maximize",
                                sampler=ReinforceSampler(space=SPACE, seed=0))
    study.optimize(objective, n_trials=30)
    state = stored_state(study)
    # the state is written when a trial is proposed: it covers the 29 trials completed before the last one
    assert _unranges(state["applied"]) == list(range(29))
    probs = np.array([np.exp(z - max(z)) / np.exp(z - max(z)).sum() for z in map(np.array, state["policy"])])
    best, worst = OPS.index("nor_conv_3x3"), OPS.index("none")  # the policy moved towards the best op
    assert probs[:, best].mean() > 0.3 and probs[:, worst].mean() < 0.2  # uniform: 0.2


def test_resume_from_the_stored_policy_equals_a_replay_of_the_trials(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'rl.db'}"
    study = optuna.create_study(study_name="rl", storage=url, direction="maximize",
                                sampler=ReinforceSampler(space=SPACE, seed=1))
    study.optimize(objective, n_trials=15)
    loaded = optuna.load_study(study_name="rl", storage=url)
    from_snapshot = ReinforceSampler(space=SPACE, seed=1).policy_state(loaded, SPACE)
    study._storage.set_study_system_attr(study._study_id, STATE_KEY, {"signature": "stale"})
    replayed = ReinforceSampler(space=SPACE, seed=1).policy_state(loaded, SPACE)
    assert from_snapshot.applied == replayed.applied == list(range(15))
    for a, b in zip(from_snapshot.policy.params, replayed.policy.params, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert from_snapshot.baseline == pytest.approx(replayed.baseline)
    assert _unranges(stored_state(loaded)["applied"]) == list(range(15))  # the replay was stored again


def test_trials_completed_out_of_order_are_replayed_in_number_order() -> None:
    study = optuna.create_study(direction="maximize", sampler=ReinforceSampler(space=SPACE, seed=0))
    first, second = study.ask(), study.ask()
    for t in (first, second):
        SPACE.suggest(t)
    study.tell(second, 5.0)
    sampler = study.sampler
    assert sampler.policy_state(study, SPACE).applied == [1]
    study.tell(first, 1.0)
    state = sampler.policy_state(study, SPACE)
    assert state.applied == [0, 1]
    fresh = ReinforceSampler(space=SPACE, seed=0)
    fresh_state = fresh.policy_state(study, SPACE)
    for a, b in zip(state.policy.params, fresh_state.policy.params, strict=True):
        np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("entropy", [0.0, 0.1])
def test_lstm_gradient_matches_finite_differences(entropy: float) -> None:
    policy = LSTMPolicy([3, 5, 2, 4], hidden=6, seed=0)
    actions, mask, adv = [2, 0, 1, 3], [True, False, True, True], 0.7

    def objective_value() -> float:
        probs = policy.probs_for(actions)
        logp = sum(np.log(p[a]) for p, a, m in zip(probs, actions, mask, strict=True) if m)
        ent = sum(-(p * np.log(p)).sum() for p, m in zip(probs, mask, strict=True) if m)
        return adv * logp + entropy * ent

    grads = policy.grad(actions, mask, adv, entropy)
    rng = np.random.default_rng(0)
    for k, param in enumerate(policy.params):
        for _ in range(3):
            i = tuple(rng.integers(s) for s in param.shape)
            old = param[i]
            param[i] = old + 1e-6
            up = objective_value()
            param[i] = old - 1e-6
            down = objective_value()
            param[i] = old
            assert grads[k][i] == pytest.approx((up - down) / 2e-6, abs=1e-6)


def test_independent_policy_gradient_is_zero_for_inactive_decisions() -> None:
    policy = IndependentPolicy([5, 5, 5])
    grads = policy.grad([1, 2, 3], [True, False, True], 1.0, 0.05)
    assert np.all(grads[1] == 0) and grads[0][1] > 0 and grads[2][3] > 0


def test_ranges_round_trip() -> None:
    numbers = [0, 1, 2, 5, 6, 9, 3]
    assert _ranges(numbers) == [[0, 2], [5, 6], [9, 9], [3, 3]]
    assert _unranges(_ranges(numbers)) == numbers


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="controller"):
        ReinforceSampler(controller="gru")
    with pytest.raises(ValueError, match="baseline_decay"):
        ReinforceSampler(baseline_decay=1.0)
