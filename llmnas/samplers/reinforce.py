"""REINFORCE over the categorical decisions (Williams, 1992; Zoph & Le, 2017; ENAS, Pham et al., 2018).

A policy -- independent logits per decision, or an LSTM controller -- samples every decision of a trial.
Each completed trial updates it by gradient ascent on ``advantage * log p(decisions) + entropy_weight *
entropy``, where ``advantage = reward - baseline``, the baseline is an exponential moving average of the
rewards (``baseline_decay``) and, with ``normalize_advantage``, the advantage is divided by a moving
estimate of its standard deviation (so the step size does not depend on the objective's scale: a loss
of 1.9 nats and an accuracy of 94 % train alike). Only the decisions the space reports as active take a
gradient. A sample whose candidate was already asked is redrawn (up to ``max_resample`` times, then a
random new candidate is used), so no evaluation is spent twice.

**State in the study.** The policy is a function of the completed trials: the updates are applied in
trial-number order. Before each proposal the sampler brings the policy up to date with the trials
completed since, and writes the policy, the baseline and the list of trials applied to the study's
system attributes (``llmnas:ReinforceSampler:state``), where a resumed study or another worker process
picks them up; whatever that snapshot misses is replayed from the trials, so a lost write or two
workers updating at once only cost a replay, never a wrong policy.

Rewards: the objective (larger is better; ``minimize`` objectives are negated), or a weighted sum with
``weights``; for several objectives without weights, minus the fraction of earlier completed trials that
dominate the trial. Infeasible trials get the worst reward seen before them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from llmnas.samplers._base import History, Observation, SpaceSampler
from llmnas.samplers._policy import IndependentPolicy, LSTMPolicy, policy_from_json, policy_to_json
from llmnas.space.base import CategoricalSpace, Params

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

STATE_KEY = "llmnas:ReinforceSampler:state"
CONTROLLERS = ("independent", "lstm")


class ReinforceSampler(SpaceSampler):
    """REINFORCE with a moving-average baseline and an entropy bonus; the policy is kept in the study.

    Example:
        .. code-block:: python

            import optuna
            from llmnas.samplers import ReinforceSampler
            from llmnas.space.nb201 import NB201Space

            space = NB201Space()
            study = optuna.create_study(
                direction="maximize", storage="sqlite:///nb201.db", study_name="rl", load_if_exists=True,
                sampler=ReinforceSampler(space=space, seed=0),
            )
            study.optimize(lambda t: evaluate(space.suggest(t)), n_trials=100)

    Args:
        space: the search space (``None`` infers the decisions from the study's trials).
        controller: ``"independent"`` logits per decision or an ``"lstm"`` controller.
        learning_rate: step size of the gradient ascent (plain SGD for ``independent``, Adam for ``lstm``).
        baseline_decay: decay of the moving-average baseline (and of the advantage scale).
        entropy_weight: weight of the entropy bonus that keeps the policy from collapsing early.
        normalize_advantage: divide the advantage by a moving estimate of its standard deviation.
        hidden_size: width of the LSTM controller.
        max_resample: policy draws tried before a random new candidate replaces an already-asked one.
        seed: seed of the random number generator (the policy's initial weights do not depend on it, so
            workers with different seeds share one policy).
        weights: weighted-sum scalarisation of several objectives (instead of the domination reward).
        avoid_repeats: never propose an already-asked candidate (``False`` only for ablations).
    """

    def __init__(
        self,
        *,
        space: CategoricalSpace | None = None,
        controller: str = "independent",
        learning_rate: float | None = None,
        baseline_decay: float = 0.9,
        entropy_weight: float = 0.05,
        normalize_advantage: bool = True,
        hidden_size: int = 32,
        max_resample: int = 100,
        seed: int | None = None,
        weights: Sequence[float] | None = None,
        avoid_repeats: bool = True,
    ) -> None:
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {', '.join(CONTROLLERS)}, got {controller!r}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        super().__init__(space=space, seed=seed, weights=weights, avoid_repeats=avoid_repeats)
        self.controller = controller
        self.learning_rate = float(learning_rate if learning_rate is not None else
                                   (0.3 if controller == "independent" else 0.02))
        self.baseline_decay = float(baseline_decay)
        self.entropy_weight = float(entropy_weight)
        self.normalize_advantage = normalize_advantage
        self.hidden_size = hidden_size
        self.max_resample = max_resample
        self._cache: _State | None = None

    # ------------------------------------------------------------------ proposal
    def propose(
        self,
        study: Study,
        trial: FrozenTrial,
        space: CategoricalSpace,
        history: History,
        rng: np.random.Generator,
    ) -> Params:
        state = self.policy_state(study, space, history)
        choices = list(space.choices().items())
        for _ in range(self.max_resample):
            actions = state.policy.sample(rng)
            params = {name: ch[a] for (name, ch), a in zip(choices, actions, strict=True)}
            if space.key(params) not in history.seen and space.is_feasible(params):
                return params
        return self.random_unseen(space, history.seen, rng)

    def policy_state(self, study: Study, space: CategoricalSpace, history: History | None = None) -> _State:
        """The policy after every completed trial of ``study``, in trial-number order (and stored there)."""
        history = history if history is not None else History.from_study(study, space)
        signature = self._signature(space)
        target = [o.number for o in history.observations]
        candidates = [self._cache, self._load(study, space, signature)]
        usable = [s for s in candidates if s is not None and s.signature == signature]
        start = max(
            (s for s in usable if s.applied == target[: len(s.applied)]),
            key=lambda s: len(s.applied),
            default=None,
        )
        state = start.copy() if start is not None else self._fresh(space, signature)
        if len(state.applied) < len(target):
            self._apply(state, space, history.observations)
            self._save(study, state)
        self._cache = state
        return state

    # ------------------------------------------------------------------ updates
    def _apply(self, state: _State, space: CategoricalSpace, observations: list[Observation]) -> None:
        names = list(space.choices())
        index = [{_hashable(c): i for i, c in enumerate(ch)} for ch in space.choices().values()]
        rewards = self._rewards(observations)
        for k in range(len(state.applied), len(observations)):
            obs, r = observations[k], rewards[k]
            state.applied.append(obs.number)
            if r is None:
                continue
            actions = [index[j][_hashable(obs.params[n])] for j, n in enumerate(names)]
            active = set(space.active(obs.params))
            mask = [n in active for n in names]
            state.step(self, actions, mask, r)

    def _rewards(self, observations: list[Observation]) -> list[float | None]:
        """Reward of each observation, from it and the observations before it only."""
        rewards: list[float | None] = []
        values = np.array([o.values for o in observations], dtype=float).reshape(len(observations), -1)
        worst: float | None = None
        for k, obs in enumerate(observations):
            if not obs.feasible:
                rewards.append(worst)
                continue
            if values.shape[1] == 1:
                r = float(values[k, 0])
            elif self._weights is not None:
                r = float(values[k] @ np.asarray(self._weights))
            else:
                earlier = values[:k]
                dominated_by = ((earlier >= values[k]).all(1) & (earlier > values[k]).any(1)).sum()
                r = -float(dominated_by) / max(k, 1)
            rewards.append(r)
            worst = r if worst is None else min(worst, r)
        return rewards

    # ------------------------------------------------------------------ state in the study
    def _signature(self, space: CategoricalSpace) -> str:
        text = json.dumps(
            [[n, [repr(c) for c in ch]] for n, ch in space.choices().items()]
            + [self.controller, self.hidden_size, self.learning_rate, self.baseline_decay, self.entropy_weight,
               self.normalize_advantage, list(self._weights or [])]
        )
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def _fresh(self, space: CategoricalSpace, signature: str) -> _State:
        sizes = [len(ch) for ch in space.choices().values()]
        init_seed = int(signature, 16) % (2**32)
        policy: IndependentPolicy | LSTMPolicy
        if self.controller == "lstm":
            policy = LSTMPolicy(sizes, self.hidden_size, seed=init_seed)
        else:
            policy = IndependentPolicy(sizes)
        return _State(signature, policy)

    def _load(self, study: Study, space: CategoricalSpace, signature: str) -> _State | None:
        # Optuna 5 has no public study-level system attributes; its own samplers (NSGA-II's parent
        # cache) use the storage like this.
        data = study._storage.get_study_system_attrs(study._study_id).get(STATE_KEY)
        if not isinstance(data, dict) or data.get("signature") != signature:
            return None
        state = self._fresh(space, signature)
        try:
            state.load(data)
        except (KeyError, TypeError, ValueError):
            return None
        return state

    def _save(self, study: Study, state: _State) -> None:
        study._storage.set_study_system_attr(study._study_id, STATE_KEY, state.dump())


class _State:
    """The policy, the baseline, the advantage scale, Adam moments and the trials applied so far."""

    def __init__(self, signature: str, policy: IndependentPolicy | LSTMPolicy) -> None:
        self.signature = signature
        self.policy = policy
        self.applied: list[int] = []
        self.baseline: float | None = None
        self.adv_var: float | None = None
        self.adam_m = [np.zeros_like(p) for p in policy.params]
        self.adam_v = [np.zeros_like(p) for p in policy.params]
        self.adam_t = 0

    def copy(self) -> _State:
        return copy.deepcopy(self)

    def step(self, sampler: ReinforceSampler, actions: list[int], mask: list[bool], reward: float) -> None:
        decay = sampler.baseline_decay
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        if sampler.normalize_advantage:
            self.adv_var = advantage * advantage if self.adv_var is None else (
                decay * self.adv_var + (1 - decay) * advantage * advantage)
            advantage = advantage / np.sqrt(self.adv_var + 1e-12) if self.adv_var > 0 else 0.0
        self.baseline = decay * self.baseline + (1 - decay) * reward
        grads = self.policy.grad(actions, mask, advantage, sampler.entropy_weight)
        lr = sampler.learning_rate
        if isinstance(self.policy, IndependentPolicy):
            for p, g in zip(self.policy.params, grads, strict=True):
                p += lr * g
            return
        self.adam_t += 1
        t = self.adam_t
        for p, g, m, v in zip(self.policy.params, grads, self.adam_m, self.adam_v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p += lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)

    def dump(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "signature": self.signature,
            "controller": self.policy.kind,
            "applied": _ranges(self.applied),
            "baseline": self.baseline,
            "adv_var": self.adv_var,
            "policy": policy_to_json(self.policy),
        }
        if isinstance(self.policy, LSTMPolicy):
            data["adam"] = {"t": self.adam_t, "m": [m.tolist() for m in self.adam_m],
                            "v": [v.tolist() for v in self.adam_v]}
        return data

    def load(self, data: dict[str, Any]) -> None:
        policy_from_json(self.policy, data["policy"])
        self.applied = _unranges(data["applied"])
        self.baseline = None if data["baseline"] is None else float(data["baseline"])
        self.adv_var = None if data["adv_var"] is None else float(data["adv_var"])
        if "adam" in data:
            self.adam_t = int(data["adam"]["t"])
            self.adam_m = [np.asarray(m, dtype=float) for m in data["adam"]["m"]]
            self.adam_v = [np.asarray(v, dtype=float) for v in data["adam"]["v"]]


def _ranges(numbers: list[int]) -> list[list[int]]:
    """``[0, 1, 2, 5, 6]`` -> ``[[0, 2], [5, 6]]`` (the order is kept; runs must ascend by one)."""
    out: list[list[int]] = []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def _unranges(ranges: list[list[int]]) -> list[int]:
    return [n for a, b in ranges for n in range(int(a), int(b) + 1)]


def _hashable(value: object) -> object:
    return (type(value).__name__, value)
