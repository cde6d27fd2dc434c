"""Perturbation-based selection (DARTS-PT) on real CIFAR-10 batches: removing an op means zeroing its weight in the
mixture; edges are fixed one at a time to the op whose removal costs most; at the end the supernet runs exactly the
found cell; fixed architecture weights (``arch_lr=0``) stay put; the command line runs it and reports both cells."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llmnas.cli import main
from llmnas.errors import RecipeError
from llmnas.space.nb201 import EDGES, OPS, NB201Cell
from llmnas.vision.oneshot.config import OneShotConfig
from llmnas.vision.oneshot.select import mixture_accuracy, perturbation_select
from llmnas.vision.oneshot.strategies import Darts, Drnas
from llmnas.vision.oneshot.supernet import CellSuperNet
from tests.conftest import shared_data
from tests.vision.test_oneshot_drnas import TINY


def strategy(cls=Darts, seed: int = 0, total: int = 4, **cfg):
    torch.manual_seed(seed)
    return cls(CellSuperNet(C=4, N=1), OneShotConfig(**cfg), seed=seed, total_steps=total)


def valid_images(oneshot_batches):
    _, (v1, v2) = oneshot_batches
    return torch.cat([v1[0], v2[0]]), torch.cat([v1[1], v2[1]])


def test_mixture_accuracy_uses_batch_statistics_and_leaves_running_statistics_alone(oneshot_batches):
    x, y = valid_images(oneshot_batches)
    net = CellSuperNet(C=4, N=1)
    cell = NB201Cell.from_str("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|")
    onehot = F.one_hot(torch.tensor([OPS.index(op) for op in cell.ops]), len(OPS)).float()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    acc, loss = mixture_accuracy(net.eval(), onehot, x, y)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # running statistics untouched
    assert not net.training  # the mode it was in
    with torch.no_grad():
        logits = net.train()(x, cell)  # one batch of 64 < 250: the same batch statistics
    assert acc == pytest.approx(100.0 * float((logits.argmax(-1) == y).float().mean()))
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_edges_are_fixed_one_by_one_to_the_op_whose_removal_costs_most(oneshot_batches):
    (t1, t2), (v1, v2) = oneshot_batches
    s = strategy()
    for train, valid in ((t1, v1), (t2, v2)):
        s.step(train, valid)
    tunes = []

    def tune() -> None:
        tunes.append(dict(s.projected))
        s.step(t1, v1)  # the supernet keeps training between decisions, fixed edges one-hot

    cell, record = perturbation_select(s, valid_images(oneshot_batches), tune)
    assert sorted(record["order"]) == list(range(len(EDGES))) and len(tunes) == len(EDGES) - 1
    assert [len(t) for t in tunes] == [1, 2, 3, 4, 5]  # each tuning step sees one more fixed edge
    for d in record["decisions"]:
        removed = d["removed"]
        # removing `none` (a zero output) never changes the mixture: removal zeroes a weight, no renormalising
        assert removed["none"] == {"acc": d["acc"], "loss": d["loss"]}
        best = min(OPS, key=lambda op: (removed[op]["acc"], -removed[op]["loss"], OPS.index(op)))
        assert d["kept"] == best == cell.ops[d["edge"]]
    # at the end every edge is one-hot: the supernet's mixture is exactly the found cell
    w = s.mixture()
    assert torch.equal(w, F.one_hot(torch.tensor([OPS.index(op) for op in cell.ops]), len(OPS)).float())
    x, _ = valid_images(oneshot_batches)
    with torch.no_grad():
        s.net.eval()
        assert torch.allclose(s.net(x, w), s.net(x, cell), atol=1e-6)
    # fixed edges get no architecture gradient any more, and the same seed gives the same cell
    s.alpha.grad = None
    s.arch_step((v1[0], v1[1]), s.project(s.alpha.softmax(-1)))
    assert s.alpha.grad is not None and torch.equal(s.alpha.grad, torch.zeros_like(s.alpha))
    again = strategy()
    for train, valid in ((t1, v1), (t2, v2)):
        again.step(train, valid)

    def tune_again() -> None:
        again.step(t1, v1)

    assert perturbation_select(again, valid_images(oneshot_batches), tune_again)[0] == cell


def test_drnas_steps_run_with_fixed_edges_one_hot(oneshot_batches):
    (t1, _), (v1, _) = oneshot_batches
    s = strategy(Drnas)
    s.projected = {0: OPS.index("nor_conv_3x3"), 5: OPS.index("skip_connect")}
    torch.manual_seed(1)
    s.step(t1, v1)
    w = s.project(s.sample())
    assert w[0].tolist() == [0, 0, 0, 1, 0] and w[5].tolist() == [0, 1, 0, 0, 0]
    assert torch.allclose(w[1:5].sum(-1), torch.ones(4)) and (w[1:5] > 0).all()  # the others still sampled


def test_fixed_architecture_weights_stay_put_while_the_weights_train(oneshot_batches):
    (t1, t2), (v1, v2) = oneshot_batches
    s = strategy(arch_lr=0)
    alpha, weights = s.alpha.detach().clone(), [p.detach().clone() for p in s.net.parameters()]
    for train, valid in ((t1, v1), (t2, v2)):
        s.step(train, valid)
    assert torch.equal(s.alpha, alpha) and s.alpha.grad is None
    assert any(not torch.equal(p, q) for p, q in zip(s.net.parameters(), weights, strict=True))
    moving = strategy()
    moving.step(t1, v1)
    assert not torch.equal(moving.alpha, alpha)


def test_learning_rate_after_the_search_is_the_override_and_the_schedule_stops_at_its_end():
    s = strategy(total=4, lr=0.025, min_lr=0.001)
    s.steps = 6  # past the end: the cosine schedule stays at its minimum
    s.set_lr()
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    s.lr_override = 0.0025
    s.set_lr()
    assert s.optimizer.param_groups[0]["lr"] == 0.0025


def test_selection_settings_are_checked():
    with pytest.raises(RecipeError, match="select='best'.*argmax, perturbation"):
        OneShotConfig(select="best")
    with pytest.raises(RecipeError, match="pt_tune_epochs=-1"):
        OneShotConfig(pt_tune_epochs=-1)
    with pytest.raises(RecipeError, match="arch_lr=-0.1"):
        OneShotConfig(arch_lr=-0.1)
    cfg = OneShotConfig(select="perturbation")
    cfg.check_strategies(["darts", "darts_minus", "drnas"])
    with pytest.raises(RecipeError, match="gdas, spos.*allowed with it: darts, darts_minus, drnas"):
        cfg.check_strategies(["darts", "gdas", "spos"])


def test_cli_refuses_perturbation_for_a_single_path_strategy_before_loading_anything(tmp_path, capsys, image_cache):
    images, data = shared_data("images/cifar10_jpg.tar.gz"), shared_data("nasbench201")
    out = tmp_path / "refused"
    code = main(["bench", "nb201-oneshot", "--images", str(images), "--data", str(data), "--seeds", "1",
                 "--out", str(out), *TINY, "--set", "select=perturbation", "--strategies", "darts,spos"])
    err = capsys.readouterr().err
    assert code != 0 and "select=perturbation" in err and "spos" in err
    assert not out.exists() and not image_cache.exists()  # refused before the output folder or the image cache


def test_bench_reports_perturbation_and_argmax_cells_of_the_same_supernet(tmp_path, capsys):
    images, data = shared_data("images/cifar10_jpg.tar.gz"), shared_data("nasbench201")
    out = tmp_path / "pt"
    assert main(["bench", "nb201-oneshot", "--images", str(images), "--data", str(data), "--seeds", "1", "--seed", "3",
                 "--out", str(out), *TINY, "--set", "select=perturbation", "--strategies", "darts,drnas"]) == 0, \
        capsys.readouterr().err
    md = (out / "results.md").read_text()
    assert "**DARTS (first order) + perturbation selection** (this run) | 1 |" in md
    assert "## Perturbation selection (DARTS-PT) against the largest weight" in md
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert {r["strategy"] for r in runs} == {"darts", "drnas"}
    for run in runs:
        decisions = run["extra"]["perturbation"]["decisions"]
        assert NB201Cell(tuple(next(d["kept"] for d in decisions if d["edge"] == e) for e in range(6))) \
            == NB201Cell.from_str(run["cell"])
        w = torch.tensor(run["extra"]["final_weights"])  # the argmax cell: the largest weight at the search's end
        assert NB201Cell(tuple(OPS[k] for k in w.argmax(-1))).to_str() == run["extra"]["argmax_cell"]
        assert set(run["table_argmax"]) == set(run["table"])
        # 2 training batches per epoch: the search's epochs, then one epoch between each of the 6 decisions
        epochs = {"darts": 1, "drnas": 2}[run["strategy"]]
        assert run["steps"] == 2 * epochs + 2 * 5
        assert any(h.get("phase") == "select" for h in run["history"])
