"""DARTS- on real CIFAR-10 batches: an auxiliary skip connection beside the five ops on every edge, its weight
decaying linearly to zero, so that the supernet at the end of the search is DARTS's; and the command line runs it."""

from __future__ import annotations

import json

import pytest
import torch

from llmnas.cli import main
from llmnas.errors import RecipeError
from llmnas.space.nb201 import EDGES, OPS, NB201Cell
from llmnas.vision.oneshot.config import OneShotConfig
from llmnas.vision.oneshot.strategies import Darts, DartsMinus
from llmnas.vision.oneshot.supernet import AuxSkip, CellSuperNet
from tests.conftest import shared_data
from tests.vision.test_oneshot_drnas import TINY


def strategy(cls=DartsMinus, seed: int = 0, total: int = 10, **cfg):
    torch.manual_seed(seed)
    return cls(CellSuperNet(C=4, N=1), OneShotConfig(**cfg), seed=seed, total_steps=total)


def test_auxiliary_skip_adds_beta_times_each_edges_input(oneshot_batches):
    (t1, _), _ = oneshot_batches
    x = t1[0][:4]
    net = CellSuperNet(C=4, N=1).eval()
    cell = net.cells[0]
    h = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    w = torch.rand(len(EDGES), len(OPS), generator=torch.Generator().manual_seed(1)).softmax(-1)
    with torch.no_grad():
        plain = cell(h, w)
        aux = cell(h, AuxSkip(w, 0.7))
        # by hand: node 1 = e(0->1) + 0.7 h; node 2 = e(0->2) + e(1->2) + 0.7 (h + n1); node 3 likewise
        nodes = [h]
        for node in (1, 2, 3):
            nodes.append(sum(cell.edges[e](nodes[src], w[e]) + 0.7 * nodes[src]
                             for e, (dst, src) in enumerate(EDGES) if dst == node))
        assert torch.allclose(aux, nodes[3], atol=1e-6) and not torch.allclose(aux, plain, atol=1e-3)
        assert torch.equal(net(x, AuxSkip(w, 0.0)), net(x, w))  # beta 0: exactly DARTS's mixture


def test_beta_decays_linearly_to_zero_and_the_search_matches_darts_when_it_is_off(oneshot_batches):
    (t1, t2), (v1, v2) = oneshot_batches
    s = strategy(total=4, aux_skip=1.0)
    betas = []
    for train, valid in ((t1, v1), (t2, v2), (t1, v2), (t2, v1)):
        betas.append(s.beta())
        s.step(train, valid)
    assert betas == [1.0, 0.75, 0.5, 0.25] and s.beta() == 0.0 and s.snapshot()["aux_skip"] == 0.0
    assert s.alpha.grad is not None and not torch.allclose(s.alpha.detach(), torch.zeros(6, 5), atol=1e-4)
    # with aux_skip 0 every step is DARTS's: the same logits and weights, bit for bit
    off, darts = strategy(total=4, aux_skip=0.0), strategy(Darts, total=4)
    for train, valid in ((t1, v1), (t2, v2)):
        off.step(train, valid)
        darts.step(train, valid)
    assert torch.equal(off.alpha, darts.alpha)
    assert all(torch.equal(a, b) for a, b in zip(off.net.parameters(), darts.net.parameters(), strict=True))
    # and with it on, the search differs (the auxiliary path changes both gradients)
    on = strategy(total=4, aux_skip=1.0)
    on.step(t1, v1)
    on.step(t2, v2)
    assert not torch.equal(on.alpha, darts.alpha)
    cell, extra = on.finish(scorer=None)
    assert isinstance(cell, NB201Cell) and len(extra["final_weights"]) == 6


def test_aux_skip_setting_is_checked():
    with pytest.raises(RecipeError, match="aux_skip=-1"):
        OneShotConfig(aux_skip=-1)
    assert OneShotConfig().epochs_of("darts_minus") == 8


def test_bench_runs_darts_minus_and_names_the_argmax_cell(tmp_path, capsys):
    images, data = shared_data("images/cifar10_jpg.tar.gz"), shared_data("nasbench201")
    out = tmp_path / "dm"
    assert main(["bench", "nb201-oneshot", "--images", str(images), "--data", str(data), "--seeds", "1", "--seed", "4",
                 "--out", str(out), *TINY, "--strategies", "darts_minus"]) == 0, capsys.readouterr().err
    md = (out / "results.md").read_text()
    assert "**DARTS- (auxiliary skip)** (this run) | 1 |" in md
    run = json.loads((out / "runs.json").read_text())["runs"][0]
    assert run["strategy"] == "darts_minus" and run["history"][-1]["aux_skip"] == 0.0
    assert run["history"][0]["aux_skip"] > 0.0
    w = torch.tensor(run["extra"]["final_weights"])
    assert NB201Cell(tuple(OPS[k] for k in w.argmax(-1))) == NB201Cell.from_str(run["cell"])
