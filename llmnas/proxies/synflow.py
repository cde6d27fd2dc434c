"""SynFlow (Tanaka et al., 2020) of a decoder at initialisation, data-free and on a log scale.

The network's weights are replaced by their absolute values (in float64), a fixed input goes through
it, ``R`` is the sum of all its outputs, and the score is ``sum over weights |w * dR/dw|``, the
"synaptic flow" through every weight.

Choices for a language model:

- Input: a token model has no all-ones input, so a fixed batch of ``1 x min(max_seq_len, 256)`` token
  ids drawn uniformly from the vocabulary with ``seed`` takes its place (the same for every
  architecture of one vocabulary and length). Distinct tokens keep the rows of the embedding
  distinct, so a LayerNorm does not see a constant vector (whose normalised value is zero).
- Output: ``R`` sums the logits; an MoE router's auxiliary loss is not an output and is left out.
- Scale: the value returned is ``ln(score)``. Every term is summed in float64 and the terms are
  combined in log space (a log-sum-exp), so the sum of a deep or wide model's terms cannot
  overflow to ``inf``; the ranking of architectures is that of the raw score.
"""

from __future__ import annotations

import math

import torch

from llmnas.proxies.common import Batch, initial_model
from llmnas.space.arch import Architecture

#: Most tokens of the fixed input (longer contexts cost time and say little more at initialisation).
MAX_TOKENS = 256


def fixed_tokens(arch: Architecture, seed: int) -> torch.Tensor:
    """The input of :func:`synflow`: ``(1, min(max_seq_len, MAX_TOKENS))`` token ids drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(arch.vocab_size, (1, min(arch.max_seq_len, MAX_TOKENS)), generator=generator)


def log_sum(terms: list[torch.Tensor]) -> float:
    """``ln(sum of every element of terms)`` for non-negative float64 tensors, without overflow."""
    logs = [torch.logsumexp(t.reshape(-1).log(), dim=0) for t in terms if t.numel()]
    return float(torch.logsumexp(torch.stack(logs), dim=0)) if logs else -math.inf


def synflow(arch: Architecture, batch: Batch | None = None, seed: int = 0) -> float:
    """``ln(sum |w * dR/dw|)`` over all weights of ``Decoder(arch)`` initialised with ``seed``, with
    ``|w|`` for every weight and ``R`` the sum of the logits of a fixed token input.

    Args:
        arch: the architecture to score.
        batch: not used (SynFlow is data-free).
        seed: seeds the initialisation and the fixed input.

    Returns:
        The log-score, larger for a network with more paths carrying more signal (a wider or deeper one).
    """
    model = initial_model(arch, seed).double()
    weights = list(model.parameters())
    with torch.no_grad():
        for w in weights:
            w.abs_()
    logits = model(fixed_tokens(arch, seed)).logits  # (1, T, V)
    grads = torch.autograd.grad(logits.sum(), weights, allow_unused=True)
    terms = [(w * g).abs().detach() for w, g in zip(weights, grads, strict=True) if g is not None]
    return log_sum(terms)
