"""What the proxies share: the batch type, a seeded model at initialisation, a seeded data batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from llmnas.data.blocks import RandomBlocks
from llmnas.errors import LlmnasError
from llmnas.models.decoder import Decoder
from llmnas.space.arch import Architecture

#: One batch of ``(inputs, targets)`` token ids, each ``(B, T)`` int64, targets shifted by one.
Batch = tuple[torch.Tensor, torch.Tensor]


class ProxyError(LlmnasError):
    """A proxy cannot score an architecture: an unknown name, or a batch missing or not fitting it."""


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block. A proxy's tensors are small: more threads only add
    synchronisation, and on a busy machine (other workers, other jobs) they wait for each other (synflow of a
    tiny-space model on 2 shared cores: ~0.05 s on one thread, ~1 s on two)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def initial_model(arch: Architecture, seed: int) -> Decoder:
    """``Decoder(arch)`` at its initialisation for ``seed``, in eval mode; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Decoder(arch)
    return model.eval()


def data_batch(tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> Batch:
    """``batch_size`` training windows of ``block_size`` tokens drawn from ``tokens`` as the training loop
    draws them (:class:`~llmnas.data.blocks.RandomBlocks` with ``seed``): the same seed, the same batch."""
    blocks = RandomBlocks(tokens, block_size, batch_size, seed)
    pairs = [blocks[i] for i in range(batch_size)]
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def check_batch(arch: Architecture, batch: Batch | None, proxy: str) -> Batch:
    """``batch`` when it fits ``arch`` (token ids below the vocabulary, length within ``max_seq_len``).

    Raises:
        ProxyError: no batch, or one that does not fit.
    """
    if batch is None:
        raise ProxyError(f"proxy {proxy!r} needs a data batch (inputs, targets); got none")
    x, y = batch
    if x.dim() != 2 or x.shape != y.shape:
        raise ProxyError(f"proxy {proxy!r}: inputs {tuple(x.shape)} and targets {tuple(y.shape)} must both be (B, T)")
    if x.shape[1] > arch.max_seq_len:
        raise ProxyError(f"proxy {proxy!r}: batch of {x.shape[1]} tokens exceeds max_seq_len={arch.max_seq_len}")
    if x.numel() and int(x.max()) >= arch.vocab_size:
        raise ProxyError(f"proxy {proxy!r}: token id {int(x.max())} is outside vocab_size={arch.vocab_size}")
    return batch
