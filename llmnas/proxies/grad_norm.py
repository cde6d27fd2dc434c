"""Gradient norm of the language-modelling loss at initialisation (Abdelfattah et al., 2021, "grad_norm")."""

from __future__ import annotations

import math

import torch

from llmnas.proxies.common import Batch, check_batch, initial_model
from llmnas.space.arch import Architecture


def grad_norm(arch: Architecture, batch: Batch | None, seed: int = 0) -> float:
    """The L2 norm of the gradient of the cross-entropy on ``batch``, over all weights of ``Decoder(arch)``
    initialised with ``seed``.

    The norm is the global one (as gradient clipping computes it), not Abdelfattah et al.'s sum of
    per-layer norms. An MoE's load-balancing loss is left out: the score is about language modelling.
    Experts no token was routed to get no gradient and add nothing.

    Args:
        arch: the architecture to score.
        batch: ``(inputs, targets)`` token ids ``(B, T)`` of real data (see :func:`~llmnas.proxies.data_batch`).
        seed: seeds the initialisation.

    Raises:
        ProxyError: no batch, or one that does not fit ``arch``.
    """
    x, y = check_batch(arch, batch, "grad_norm")
    model = initial_model(arch, seed)
    weights = list(model.parameters())
    loss = model(x, targets=y).ce_loss
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return math.sqrt(sum(float(g.double().square().sum()) for g in grads if g is not None))
