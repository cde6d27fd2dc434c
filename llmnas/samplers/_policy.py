"""Policies over a sequence of categorical decisions, for REINFORCE, in numpy.

A policy samples one choice index per decision and returns the gradient, with respect to its
parameters, of ``advantage * sum_j log p(a_j) + entropy * sum_j H(p_j)`` over the *active* decisions
(``mask``). Parameters are plain lists of arrays so that they can be stored as JSON in the study.

- :class:`IndependentPolicy`: one vector of logits per decision (the NAS-Bench-201 REINFORCE baseline).
- :class:`LSTMPolicy`: an ENAS-style controller; an LSTM reads the previous decision's choice (as an
  embedding) and a linear head per decision gives the logits, so decisions can depend on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _objective_grad(p: np.ndarray, action: int, advantage: float, entropy: float) -> np.ndarray:
    """d/dz of ``advantage * log p[action] + entropy * H(p)`` for ``p = softmax(z)``."""
    g = -advantage * p
    g[action] += advantage
    if entropy:
        logp = np.log(p + 1e-12)
        h = -(p * logp).sum()
        g += entropy * (-p * (logp + h))
    return g


class IndependentPolicy:
    """Independent softmax over each decision's choices, logits initialised to zero (uniform)."""

    kind = "independent"

    def __init__(self, sizes: Sequence[int], seed: int = 0) -> None:
        self.sizes = list(sizes)
        self.params = [np.zeros(n) for n in self.sizes]

    def probs(self) -> list[np.ndarray]:
        return [softmax(z) for z in self.params]

    def sample(self, rng: np.random.Generator) -> list[int]:
        return [int(rng.choice(len(p), p=p)) for p in self.probs()]

    def grad(self, actions: Sequence[int], mask: Sequence[bool], advantage: float, entropy: float) -> list:
        grads = [np.zeros(n) for n in self.sizes]
        for j, p in enumerate(self.probs()):
            if mask[j]:
                grads[j] = _objective_grad(p, actions[j], advantage, entropy)
        return grads

    def entropy(self) -> float:
        return float(sum(-(p * np.log(p + 1e-12)).sum() for p in self.probs()))


class LSTMPolicy:
    """An LSTM controller (Zoph & Le, 2017; ENAS): decision ``j`` is sampled from a head on the state that
    has read the choices of decisions ``0..j-1``.

    Args:
        sizes: number of choices of each decision.
        hidden: LSTM width (also the embedding width).
        seed: seed of the initial weights (uniform in ``[-0.1, 0.1]`` as in ENAS).
    """

    kind = "lstm"

    def __init__(self, sizes: Sequence[int], hidden: int = 32, seed: int = 0) -> None:
        self.sizes = list(sizes)
        self.hidden = h = hidden
        rng = np.random.default_rng(seed)

        def u(*shape: int) -> np.ndarray:
            return rng.uniform(-0.1, 0.1, size=shape)

        # params: [lstm W (4h, 2h), lstm b (4h), start input (h)] + per decision [embedding (n, h),
        # head W (n, h), head b (n)]
        self.params = [u(4 * h, 2 * h), np.zeros(4 * h), u(h)]
        for n in self.sizes:
            self.params += [u(n, h), u(n, h), np.zeros(n)]

    def _unpack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, ...]]]:
        w, b, start = self.params[:3]
        per = [tuple(self.params[3 + 3 * j : 6 + 3 * j]) for j in range(len(self.sizes))]
        return w, b, start, per

    def _run(self, actions: Sequence[int] | None, rng: np.random.Generator | None) -> tuple[list[int], list]:
        w, b, start, per = self._unpack()
        h = np.zeros(self.hidden)
        c = np.zeros(self.hidden)
        x = start
        taken, cache = [], []
        for j, (emb, hw, hb) in enumerate(per):
            xh = np.concatenate([x, h])
            gates = w @ xh + b
            i, f, o = (1 / (1 + np.exp(-gates[k * self.hidden : (k + 1) * self.hidden])) for k in range(3))
            g = np.tanh(gates[3 * self.hidden :])
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            p = softmax(hw @ h_new + hb)
            a = int(rng.choice(len(p), p=p)) if actions is None else int(actions[j])
            cache.append((xh, i, f, o, g, c, c_new, h_new, p, a))
            taken.append(a)
            h, c, x = h_new, c_new, emb[a]
        return taken, cache

    def sample(self, rng: np.random.Generator) -> list[int]:
        return self._run(None, rng)[0]

    def probs_for(self, actions: Sequence[int]) -> list[np.ndarray]:
        return [entry[8] for entry in self._run(actions, None)[1]]

    def grad(self, actions: Sequence[int], mask: Sequence[bool], advantage: float, entropy: float) -> list:
        w, b, start, per = self._unpack()
        _, cache = self._run(actions, None)
        hs = self.hidden
        grads = [np.zeros_like(p) for p in self.params]
        dh_next = np.zeros(hs)
        dc_next = np.zeros(hs)
        dx_next = np.zeros(hs)  # gradient w.r.t. the input of step j+1 (the embedding of a_j)
        for j in reversed(range(len(per))):
            xh, i, f, o, g, c_prev, c, h, p, a = cache[j]
            emb, hw, hb = per[j]
            k = 3 + 3 * j
            grads[k][a] += dx_next  # step j+1 read emb_j[a_j]
            dz = _objective_grad(p, a, advantage, entropy) if mask[j] else np.zeros_like(p)
            grads[k + 1] += np.outer(dz, h)
            grads[k + 2] += dz
            dh = hw.T @ dz + dh_next
            tc = np.tanh(c)
            do = dh * tc
            dc = dh * o * (1 - tc * tc) + dc_next
            di, df, dg = dc * g, dc * c_prev, dc * i
            dgates = np.concatenate([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g * g)])
            grads[0] += np.outer(dgates, xh)
            grads[1] += dgates
            dxh = w.T @ dgates
            dx_next, dh_next, dc_next = dxh[:hs], dxh[hs:], dc * f
        grads[2] += dx_next
        return grads

    def entropy(self, actions: Sequence[int]) -> float:
        return float(sum(-(p * np.log(p + 1e-12)).sum() for p in self.probs_for(actions)))


def policy_to_json(policy: IndependentPolicy | LSTMPolicy) -> list[list[Any]]:
    return [p.tolist() for p in policy.params]


def policy_from_json(policy: IndependentPolicy | LSTMPolicy, data: list) -> None:
    if len(data) != len(policy.params):
        raise ValueError("stored policy does not match")
    params = [np.asarray(d, dtype=float) for d in data]
    if any(p.shape != q.shape for p, q in zip(params, policy.params, strict=True)):
        raise ValueError("stored policy does not match")
    policy.params = params
