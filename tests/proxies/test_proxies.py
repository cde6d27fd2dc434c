"""Zero-cost proxies on real decoders of the shipped spaces."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from llmnas.models.decoder import Decoder
from llmnas.proxies import (
    PROXIES,
    ProxyError,
    data_batch,
    get_proxy,
    grad_norm,
    objective_name,
    objective_value,
    one_thread,
    proxy_of_objective,
    score,
    synflow,
)
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, load_space

SPACES = ("tiny", "tiny_char", "moe")


def archs(space: str, n: int = 3) -> list[Architecture]:
    return [load_space(space).sample(seed) for seed in range(n)]


def batch_for(arch: Architecture, seed: int = 0, batch_size: int = 2, block: int = 32):
    tokens = np.random.default_rng(seed).integers(0, arch.vocab_size, 4096).astype(np.uint16)
    return data_batch(tokens, block, batch_size, seed)


def largest_tiny() -> Architecture:
    """The largest decoder of the tiny space: width 160, 6 layers of 8 full MHA heads and SwiGLU x4."""
    block = BlockSpec(AttentionSpec(8, 8, 20), DenseFFN(640, "swiglu"))
    arch = Architecture(vocab_size=257, d_model=160, max_seq_len=128, blocks=(block,) * 6)
    assert load_space("tiny").encode(arch)  # it is in the space
    return arch


def test_registry_names_directions_and_data() -> None:
    assert set(PROXIES) == {"params", "non_embedding_params", "synflow", "grad_norm"}
    assert all(p.direction in ("maximize", "minimize") for p in PROXIES.values())
    assert [n for n, p in PROXIES.items() if p.needs_data] == ["grad_norm"]
    with pytest.raises(ProxyError, match="'snip' is not known .allowed: params, non_embedding_params"):
        get_proxy("snip")


def test_objective_names_are_negated_maximised_proxies() -> None:
    assert objective_name("synflow") == "neg_synflow" and proxy_of_objective("neg_synflow") == "synflow"
    assert objective_name("params") == "neg_params" and proxy_of_objective("params") is None
    assert objective_value("synflow", 3.0) == -3.0
    assert proxy_of_objective("val_loss") is None


@pytest.mark.parametrize("space", SPACES)
def test_params_proxies_equal_the_spec_counts(space: str) -> None:
    for arch in archs(space):
        counts = arch.param_counts()
        assert score("params", arch) == counts.total
        assert score("non_embedding_params", arch) == counts.non_embedding


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("name", ["synflow", "grad_norm"])
def test_values_are_finite_positive_and_deterministic(space: str, name: str) -> None:
    for arch in archs(space, 2):
        batch = batch_for(arch)
        before = torch.random.get_rng_state()
        value = score(name, arch, batch, seed=0)
        assert math.isfinite(value) and value > 0
        assert score(name, arch, batch, seed=0) == value
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
        assert score(name, arch, batch, seed=1) != value  # another initialisation


@pytest.mark.parametrize("space", SPACES)
def test_synflow_grows_with_width(space: str) -> None:
    s = load_space(space)
    for seed in range(2):
        params = s.sample_params(seed)
        values = [synflow(s.decode({**params, "d_model": d})) for d in s.choices()["d_model"]]
        assert values == sorted(values) and len(set(values)) == len(values), values


def test_synflow_is_finite_for_a_deep_model() -> None:
    block = BlockSpec(AttentionSpec(2, 2, 16), DenseFFN(64, "relu2"))
    deep = Architecture(vocab_size=65, d_model=32, max_seq_len=16, norm="layernorm", blocks=(block,) * 96)
    assert math.isfinite(synflow(deep))


def test_synflow_ignores_data_and_is_fast_on_the_largest_tiny_model() -> None:
    arch = largest_tiny()
    assert synflow(arch, batch_for(arch), 0) == synflow(arch, None, 0)
    # A ratio, not a wall-clock bound (a loaded machine slows both alike): synflow costs no more than a few
    # float32 training steps of the same model at the recipe's batch (16 x 128), interleaved, best of three.
    model = Decoder(arch)
    x = torch.randint(0, arch.vocab_size, (16, arch.max_seq_len), generator=torch.Generator().manual_seed(0))
    proxy_s, step_s = [], []
    with one_thread():  # as the search runs proxies
        for _ in range(3):
            start = time.perf_counter()
            synflow(arch)
            proxy_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            model(x, targets=x).loss.backward()
            step_s.append(time.perf_counter() - start)
    assert min(proxy_s) < 3 * min(step_s), (proxy_s, step_s)


def test_grad_norm_reads_the_data() -> None:
    arch = archs("tiny", 1)[0]
    assert grad_norm(arch, batch_for(arch, seed=0)) != grad_norm(arch, batch_for(arch, seed=1))
    x, y = batch_for(arch)
    assert grad_norm(arch, (x, y)) == grad_norm(arch, (x.clone(), y.clone()))
    with pytest.raises(ProxyError, match="needs a data batch"):
        grad_norm(arch, None)
    with pytest.raises(ProxyError, match="outside vocab_size=257"):
        grad_norm(arch, (x + 300, y))
    with pytest.raises(ProxyError, match="exceeds max_seq_len"):
        grad_norm(arch, batch_for(arch, block=arch.max_seq_len + 1))


def test_data_batch_is_a_function_of_the_seed() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = data_batch(tokens, 16, 3, seed=5)
    assert x.shape == y.shape == (3, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x, data_batch(tokens, 16, 3, seed=5)[0])
    assert not torch.equal(x, data_batch(tokens, 16, 3, seed=6)[0])


def test_moe_experts_get_scored() -> None:
    moe = next(a for a in archs("moe", 10) if a.is_moe)
    batch = batch_for(moe)
    assert all(math.isfinite(score(name, moe, batch)) for name in PROXIES)
    assert score("params", moe) > moe.param_counts().active
