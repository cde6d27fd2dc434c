"""The NAS-Bench-201 cell supernet shares weights correctly: one-hot op weights, a single path, a GDAS
sample and the extracted fixed network all compute the same function on real CIFAR-10 images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmnas.space.nb201 import EDGES, OPS, NB201Cell
from llmnas.vision.data import normalise
from llmnas.vision.oneshot.evaluate import CellScorer, recalibrate_bn
from llmnas.vision.oneshot.supernet import CellSuperNet, Hard

CELLS = [
    NB201Cell.from_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"),
    NB201Cell.from_str("|avg_pool_3x3~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|"),
]


@pytest.fixture(scope="module")
def images(cifar):
    return normalise(cifar.train_x[:48], cifar), cifar.train_y[:48]


def trained_net(images, seed: int = 0) -> CellSuperNet:
    """A small supernet after a few SGD steps on random paths, so no weight or BN statistic is at its init."""
    torch.manual_seed(seed)
    net = CellSuperNet(C=4, N=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = images
    for k in range(3):
        cell = NB201Cell.from_code(1234 * (k + 1))
        opt.zero_grad()
        F.cross_entropy(net(x, cell), y).backward()
        opt.step()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def one_hot(cell: NB201Cell) -> torch.Tensor:
    return F.one_hot(torch.tensor([OPS.index(op) for op in cell.ops]), len(OPS)).float()


@pytest.mark.parametrize("cell", CELLS, ids=["best", "pools"])
@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_one_hot_mixture_equals_single_path_and_fixed_network(images, cell, train_mode):
    net = trained_net(images)
    x, _ = images
    fixed = net.extract(cell)
    net.train(train_mode)
    fixed.train(train_mode)
    with torch.no_grad():
        mixed = net(x, one_hot(cell))
        path = net(x, cell)
        standalone = fixed(x)
    assert torch.allclose(mixed, path, atol=1e-5)
    assert torch.allclose(path, standalone, atol=1e-5)
    # a different cell gives a different function (the comparison can fail)
    other = NB201Cell(tuple("nor_conv_3x3" if op != "nor_conv_3x3" else "avg_pool_3x3" for op in cell.ops))
    with torch.no_grad():
        assert not torch.allclose(net(x, other), path, atol=1e-3)


def test_extracted_network_has_exactly_the_cells_parameters(images):
    net = trained_net(images)
    cell = CELLS[0]
    fixed = net.extract(cell)
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    outside = count(net) - sum(count(c) for c in net.cells)
    chosen = sum(count(c.edges[e].ops[OPS.index(op)]) for c in net.cells for e, op in enumerate(cell.ops))
    assert count(fixed) == outside + chosen < count(net)
    # the shared weights outside the cells are copied, not re-initialised
    assert torch.equal(fixed.classifier.weight, net.classifier.weight)
    assert torch.equal(fixed.stem[0].weight, net.stem[0].weight)


def test_gdas_sample_runs_one_op_per_edge_and_reaches_every_logit(images):
    net = trained_net(images).eval()
    x, y = images
    cell = CELLS[0]
    alpha = torch.zeros(len(EDGES), len(OPS), requires_grad=True)
    soft = (alpha + torch.linspace(0, 1, len(OPS))).softmax(-1)
    hard = one_hot(cell) - soft.detach() + soft
    out = net(x, Hard(hard, tuple(OPS.index(op) for op in cell.ops)))
    with torch.no_grad():
        assert torch.allclose(out, net(x, cell), atol=1e-5)
    F.cross_entropy(out, y).backward()
    assert alpha.grad is not None and bool((alpha.grad != 0).all())


def test_bn_recalibration_scores_are_deterministic_and_per_cell(cifar, images):
    net = trained_net(images)
    x, y = normalise(cifar.train_x[100:228], cifar), cifar.train_y[100:228]
    calib = list(images[0].split(16))
    scorer = CellScorer(net, calib, x, y)
    a = scorer(CELLS[0])
    b = scorer(CELLS[1])
    assert scorer(CELLS[0]) == a and scorer(CELLS[1]) == b and scorer.evaluations == 4
    # the statistics really are re-estimated for the cell: they differ between the two cells
    recalibrate_bn(net, CELLS[0], calib)
    stats0 = net.lastact[0].running_var.clone()
    recalibrate_bn(net, CELLS[1], calib)
    assert not torch.allclose(stats0, net.lastact[0].running_var)
    # and the BN momentum is restored for training afterwards
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
