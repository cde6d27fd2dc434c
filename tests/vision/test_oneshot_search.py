"""One-shot strategies on real CIFAR-10 batches: DARTS's architecture step reads only validation batches,
each strategy's search runs end to end at tiny size and names a valid cell."""

from __future__ import annotations

import pytest
import torch

from llmnas.space.nb201 import NB201Cell
from llmnas.vision.oneshot.config import OneShotConfig
from llmnas.vision.oneshot.search import run_search
from llmnas.vision.oneshot.strategies import Darts, Gdas
from llmnas.vision.oneshot.supernet import CellSuperNet

TINY = dict(C=2, N=1, train_images=96, valid_images=96, batch_size=32, eval_images=64, bn_batches=1,
            search_trials=4, population_size=2, sample_size=1, fidelity_cells=5, final_samples=2,
            controller_every=1, epochs={"darts": 1, "gdas": 1, "enas": 1, "spos": 1, "drnas": 1})


@pytest.fixture(scope="module")
def batches(oneshot_batches):
    return oneshot_batches


def darts(seed: int = 0) -> Darts:
    torch.manual_seed(seed)
    return Darts(CellSuperNet(C=4, N=1), OneShotConfig(), seed=seed, total_steps=10)


def test_darts_architecture_step_depends_on_the_validation_batch_only(batches):
    (t1, t2), (v1, v2) = batches
    a, b, c = darts(), darts(), darts()
    assert torch.equal(a.alpha, b.alpha)
    a.step(t1, v1)
    b.step(t2, v1)  # other training batch, same validation batch
    c.step(t1, v2)  # same training batch, other validation batch
    assert torch.equal(a.alpha, b.alpha)
    assert not torch.equal(a.alpha, c.alpha)
    # the weights did learn from the training batch
    wa = torch.cat([p.flatten() for p in a.net.parameters()])
    wb = torch.cat([p.flatten() for p in b.net.parameters()])
    assert not torch.equal(wa, wb)


def test_weight_step_leaves_the_architecture_alone(batches):
    (t1, _), (v1, _) = batches
    s = darts()
    before = s.alpha.detach().clone()
    s.weight_step(t1, s.op_weights())
    assert torch.equal(before, s.alpha) and s.alpha.grad is None
    s.optimizer.zero_grad(set_to_none=True)
    s.arch_step(v1, s.alpha.softmax(-1))
    assert not torch.equal(before, s.alpha)
    # the architecture step sets no gradient on the shared weights
    assert all(p.grad is None for p in s.net.parameters())


def test_gdas_temperature_anneals_and_samples_one_op_per_edge(batches):
    torch.manual_seed(0)
    s = Gdas(CellSuperNet(C=4, N=1), OneShotConfig(tau_max=10, tau_min=0.1), seed=0, total_steps=4)
    taus = []
    (t1, t2), (v1, v2) = batches
    for k in range(4):
        taus.append(s.tau())
        s.step((t1, t2)[k % 2], (v1, v2)[k % 2])
    assert taus[0] == 10 and taus == sorted(taus, reverse=True) and s.tau() == pytest.approx(0.1)
    sample = s.sample()
    assert sample.weights.sum(-1).detach().allclose(torch.ones(6)) and len(sample.index) == 6


@pytest.mark.parametrize("strategy", ["darts", "gdas", "enas", "spos", "drnas"])
def test_each_strategy_searches_end_to_end(cifar, strategy):
    cfg = OneShotConfig(**TINY)
    result = run_search(strategy, cifar, cfg, seed=3)
    cell = NB201Cell.from_str(result.cell)
    assert result.steps == 3 and len(result.history) >= 1
    if strategy in ("darts", "gdas", "drnas"):
        w = torch.tensor(result.extra["final_weights"])
        assert w.shape == (6, 5) and NB201Cell(tuple(("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                                                      "avg_pool_3x3")[i] for i in w.argmax(-1))) == cell
    if strategy == "enas":
        assert len(result.extra["rewards"]) == 3  # one controller update per weight step here
        assert result.cell in {s["cell"] for s in result.extra["final_samples"]}
    if strategy == "spos":
        assert len(result.extra["search"]) == 4 and len(result.extra["fidelity"]) == 5
        best = max(result.extra["search"], key=lambda t: t["acc"])
        assert best["acc"] == max(t["acc"] for t in result.extra["search"])
        assert NB201Cell.from_str(best["cell"]).unique_str() == cell.unique_str()
