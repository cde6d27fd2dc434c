"""Map-style torch datasets of fixed-length windows for the training loop.

- :class:`RandomBlocks`: nanoGPT-style random windows for training; item ``i`` is a pure function
  of ``(seed, i)``, so ``accelerate``'s sharded dataloaders and resumed runs see the same windows.
- :class:`EvalBlocks`: consecutive non-overlapping windows covering the whole validation split;
  every target token ``t[1..N-1]`` appears exactly once, so the mean loss over non-ignored targets
  is the loss on the full split.

Both yield ``(x, y)`` pairs of int64 tensors of length ``block_size`` with ``y`` shifted by one
(``y[j]`` is the token after ``x[j]``), as nanoGPT's ``get_batch`` does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from llmnas.errors import DataError

IGNORE_INDEX = -100
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """A 64-bit integer hash (SplitMix64's finaliser): fast, platform-independent, well mixed."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class RandomBlocks(Dataset):
    """Random training windows: item ``i`` is ``(t[s:s+B], t[s+1:s+B+1])`` with ``s = h(seed, i)``.

    Args:
        tokens: the training token ids (1-D).
        block_size: window length ``B``.
        num_samples: the dataset's length (e.g. steps × batch size × processes).
        seed: changes every window; the same ``(seed, i)`` always gives the same window.

    Raises:
        DataError: fewer than ``block_size + 1`` tokens.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, num_samples: int, seed: int = 0) -> None:
        if len(tokens) < block_size + 1:
            raise DataError(f"{len(tokens)} tokens are fewer than one block of {block_size} (+1 target)")
        if num_samples < 1:
            raise DataError(f"num_samples={num_samples} must be positive")
        self.tokens = np.asarray(tokens)
        self.block_size = block_size
        self.num_samples = num_samples
        self.seed = seed
        self._seed_hash = _splitmix64(seed & _MASK64)
        self._n_starts = len(tokens) - block_size  # starts 0 .. N-B-1 keep the last target inside

    def __len__(self) -> int:
        return self.num_samples

    def start(self, i: int) -> int:
        """Where window ``i`` starts."""
        return _splitmix64(self._seed_hash ^ i) % self._n_starts

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_samples:
            raise IndexError(i)
        s = self.start(i)
        window = torch.from_numpy(self.tokens[s:s + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]


class EvalBlocks(Dataset):
    """Consecutive windows covering the whole split: window ``k`` predicts ``t[kB+1 .. kB+B]``.

    With ``N`` tokens there are ``ceil((N-1)/B)`` windows; the last is padded with ``pad_id`` in
    ``x`` and ``ignore_index`` in ``y``. Summing the loss over targets ``!= ignore_index`` (or
    ``F.cross_entropy(..., ignore_index=-100)`` with ``reduction="sum"``) and dividing by
    :attr:`num_targets` gives the mean loss over the full split.

    Args:
        tokens: the validation token ids (1-D), at least 2.
        block_size: window length ``B``.
        pad_id: input id written into the padding of the last window.
        ignore_index: target value of the padding.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, pad_id: int = 0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        if len(tokens) < 2:
            raise DataError(f"{len(tokens)} validation token(s): at least 2 are needed for one target")
        if block_size < 1:
            raise DataError(f"block_size={block_size} must be positive")
        self.tokens = np.asarray(tokens)
        self.block_size = block_size
        self.pad_id = pad_id
        self.ignore_index = ignore_index

    @property
    def num_targets(self) -> int:
        """Targets counted over all windows: every token but the first, ``N - 1``."""
        return len(self.tokens) - 1

    def __len__(self) -> int:
        return -(-self.num_targets // self.block_size)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        lo = k * self.block_size
        n = min(self.block_size, self.num_targets - lo)
        x = torch.full((self.block_size,), self.pad_id, dtype=torch.int64)
        y = torch.full((self.block_size,), self.ignore_index, dtype=torch.int64)
        x[:n] = torch.from_numpy(self.tokens[lo:lo + n].astype(np.int64))
        y[:n] = torch.from_numpy(self.tokens[lo + 1:lo + 1 + n].astype(np.int64))
        return x, y
