"""RandomBlocks (deterministic random windows) and EvalBlocks (exact coverage of the validation split)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from llmnas.data import IGNORE_INDEX, EvalBlocks, RandomBlocks
from llmnas.errors import DataError
from tests.conftest import shared_data


def tokens(n: int, vocab: int = 65, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


@pytest.mark.parametrize(("n", "block"), [(2, 1), (2, 8), (9, 8), (10, 8), (11, 8), (1000, 64), (1001, 7)])
def test_eval_blocks_cover_every_target_exactly_once(n, block):
    t = tokens(n)
    ds = EvalBlocks(t, block, pad_id=3)
    assert len(ds) == -(-(n - 1) // block) and ds.num_targets == n - 1
    xs, ys = zip(*(ds[k] for k in range(len(ds))), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    keep = y != IGNORE_INDEX
    assert int(keep.sum()) == n - 1
    assert torch.equal(y[keep], torch.from_numpy(t[1:].astype(np.int64)))  # t[1..N-1], in order, once
    assert torch.equal(x[keep], torch.from_numpy(t[:-1].astype(np.int64)))  # each target's own input
    assert bool((x[~keep] == 3).all())  # the padding of the last window
    assert bool(keep[: n - 1].all()) and not bool(keep[n - 1:].any())  # only the tail is padded
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_mean_eval_loss_equals_loss_on_the_full_split():
    t = tokens(5000, vocab=50)
    bigram = torch.randn(50, 50, generator=torch.Generator().manual_seed(0))  # a model whose logits need only x
    full = F.cross_entropy(bigram[torch.from_numpy(t[:-1].astype(np.int64))],
                           torch.from_numpy(t[1:].astype(np.int64)))
    total, count = 0.0, 0
    for x, y in DataLoader(EvalBlocks(t, 64), batch_size=7):
        total += F.cross_entropy(bigram[x].flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        count += int((y != IGNORE_INDEX).sum())
    assert count == len(t) - 1
    assert total / count == pytest.approx(full.item(), rel=1e-5)


def test_random_blocks_are_shifted_windows_of_the_tokens():
    t = shared_data("text/tinyshakespeare.txt").read_bytes()
    arr = np.frombuffer(t, dtype=np.uint8).astype(np.uint16)
    ds = RandomBlocks(arr, 64, num_samples=500, seed=1)
    for i in range(0, 500, 50):
        x, y = ds[i]
        s = ds.start(i)
        assert x.dtype == torch.int64 and x.shape == y.shape == (64,)
        assert torch.equal(x, torch.from_numpy(arr[s:s + 64].astype(np.int64)))
        assert torch.equal(y, torch.from_numpy(arr[s + 1:s + 65].astype(np.int64)))


def test_random_blocks_are_a_function_of_seed_and_index():
    t = tokens(10_000)
    a, b = RandomBlocks(t, 16, 1000, seed=7), RandomBlocks(t, 16, 1000, seed=7)
    order = np.random.default_rng(0).permutation(1000)
    for i in order[:100]:  # access order does not matter
        assert torch.equal(a[int(i)][0], b[int(i)][0])
    starts = [a.start(i) for i in range(1000)]
    assert starts == [b.start(i) for i in range(1000)]
    assert starts != [RandomBlocks(t, 16, 1000, seed=8).start(i) for i in range(1000)]
    # windows spread over the whole range, including both ends' neighbourhoods
    assert min(starts) < 100 and max(starts) > 10_000 - 16 - 100 and max(starts) <= 10_000 - 17
    counts = np.histogram(starts, bins=10, range=(0, 10_000 - 16))[0]
    assert counts.min() > 60 and counts.max() < 140  # about uniform: 100 ± 4 standard deviations


def test_random_blocks_shard_across_processes_like_a_distributed_sampler():
    t = tokens(5000)
    ds = RandomBlocks(t, 8, num_samples=64, seed=3)
    seen = []
    for rank in range(2):
        loader = DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False))
        seen += [x for xb, _ in loader for x in xb]
    assert len(seen) == 64
    assert sorted(tuple(x.tolist()) for x in seen) == sorted(tuple(ds[i][0].tolist()) for i in range(64))


def test_block_errors():
    with pytest.raises(DataError, match="8 tokens are fewer than one block of 8"):
        RandomBlocks(tokens(8), 8, 10)
    with pytest.raises(DataError, match="at least 2"):
        EvalBlocks(tokens(1), 8)
    RandomBlocks(tokens(9), 8, 10)[9]  # exactly one window fits
