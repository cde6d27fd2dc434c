"""DrNAS on real CIFAR-10 batches: op weights are Dirichlet samples of concentration elu(alpha) + 1, the
architecture step moves the concentration through the sample's pathwise gradient, the regulariser on the
concentration is applied, and ``llmnas bench nb201-oneshot --strategies drnas`` names a valid cell."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llmnas.benchmarks import load_nb201
from llmnas.benchmarks.nb201 import DATASETS
from llmnas.cli import main
from llmnas.errors import RecipeError
from llmnas.space.nb201 import OPS, NB201Cell
from llmnas.vision.oneshot.config import OneShotConfig
from llmnas.vision.oneshot.strategies import Drnas
from llmnas.vision.oneshot.supernet import CellSuperNet
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def batches(oneshot_batches):
    return oneshot_batches


def drnas(seed: int = 0, **cfg) -> Drnas:
    torch.manual_seed(seed)
    return Drnas(CellSuperNet(C=4, N=1), OneShotConfig(**cfg), seed=seed, total_steps=10)


def test_weights_are_dirichlet_samples_of_concentration_elu_alpha_plus_one():
    s = drnas()
    with torch.no_grad():
        s.alpha.copy_(torch.tensor([[2.0, 0.0, 0.0, 0.0, -1.0]] * 6))
    beta = torch.tensor([3.0, 1.0, 1.0, 1.0, float(torch.exp(torch.tensor(-1.0)))])
    assert torch.allclose(s.concentration().detach(), beta.expand(6, 5))
    a, b = s.sample(), s.sample()
    assert a.shape == (6, 5) and (a > 0).all() and torch.allclose(a.sum(-1), torch.ones(6))
    assert not torch.allclose(a, b)  # a fresh draw per forward
    # the draws follow Dirichlet(beta): mean beta / sum(beta), variance m (1 - m) / (sum(beta) + 1)
    with torch.no_grad():
        draws = torch.stack([s.sample() for _ in range(2000)]).reshape(-1, 5)  # 12,000 draws
    mean = beta / beta.sum()
    assert torch.allclose(draws.mean(0), mean, atol=0.01)
    assert torch.allclose(draws.var(0), mean * (1 - mean) / (beta.sum() + 1), rtol=0.1)
    # the reported weights are the Dirichlet mean, and the found cell its argmax per edge
    assert torch.allclose(s.op_weights(), mean.expand(6, 5))
    cell, extra = s.finish(scorer=None)  # DrNAS's pick needs no scoring
    assert cell.ops == ("none",) * 6 and torch.allclose(torch.tensor(extra["final_concentration"]), beta.expand(6, 5))


def test_architecture_step_moves_the_concentration_and_the_weight_step_does_not(batches):
    (t1, _), (v1, v2) = batches
    s = drnas()
    # the pathwise gradient of the validation loss reaches every entry of alpha through the sample
    x, y = v1
    (grad,) = torch.autograd.grad(F.cross_entropy(s.net(x, s.sample()), y), [s.alpha])
    assert torch.isfinite(grad).all() and (grad != 0).all()
    before = s.concentration().detach().clone()
    s.weight_step(t1, s.sample().detach())
    assert torch.equal(before, s.concentration().detach()) and s.alpha.grad is None
    s.optimizer.zero_grad(set_to_none=True)
    s.arch_step(v1, s.sample())
    assert all(p.grad is None for p in s.net.parameters())  # the architecture step leaves the weights alone
    after_one = s.concentration().detach().clone()
    assert (after_one != before).all()
    weights = torch.cat([p.detach().flatten() for p in s.net.parameters()])
    for _ in range(3):
        s.step(t1, v2)
    assert not torch.equal(after_one, s.concentration().detach())
    assert not torch.equal(weights, torch.cat([p.detach().flatten() for p in s.net.parameters()]))
    assert s.snapshot()["concentration"] == [[round(float(b), 5) for b in row] for row in s.concentration().detach()]


def test_l2_regulariser_on_the_concentration_is_applied(batches):
    (t1, _), (v1, _) = batches
    start = 0.5 * torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    ends = {}
    for scale in (0.0, 1e-3, 100.0):
        s = drnas(drnas_reg_scale=scale, arch_weight_decay=0.5)  # Adam's own weight decay is not DrNAS's
        assert s.arch_optimizer.param_groups[0]["weight_decay"] == 0.0
        with torch.no_grad():
            s.alpha.copy_(start)
        beta = F.elu(start) + 1
        penalty = s.arch_penalty()
        if scale == 0:
            assert penalty is None
        else:
            assert float(penalty.detach()) == pytest.approx(scale / 2 * float(((beta - 1) ** 2).sum()), rel=1e-5)
            (g,) = torch.autograd.grad(penalty, [s.alpha])
            # d/dalpha of scale/2 (beta - 1)^2 = scale (beta - 1) elu'(alpha): the anchor's pull toward alpha = 0
            assert torch.allclose(g, scale * (beta - 1) * torch.where(start > 0, 1.0, torch.exp(start)), rtol=1e-4)
        torch.manual_seed(7)  # the same Dirichlet draw in each run
        s.arch_step(v1, s.sample())
        ends[scale] = s.alpha.detach().clone()
    assert not torch.equal(ends[0.0], ends[1e-3])
    # a dominant regulariser moves every alpha toward the anchor (Adam's first step: arch_lr against the sign)
    assert (ends[100.0].abs() < start.abs()).all()
    assert not (ends[0.0].abs() < start.abs()).all()


def test_kl_regulariser_is_zero_at_the_uniform_anchor_and_pulls_toward_it():
    s = drnas(drnas_reg="kl", drnas_reg_scale=1.0)
    with torch.no_grad():
        s.alpha.zero_()
    assert float(s.arch_penalty().detach()) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        s.alpha.copy_(torch.tensor([[1.0, -0.5, 0.3, 0.0, 2.0]] * 6))
    penalty = s.arch_penalty()
    (g,) = torch.autograd.grad(penalty, [s.alpha])
    assert float(penalty.detach()) > 0
    moved = s.alpha.detach() - 1e-2 * g  # a gradient step lowers the KL to Dir(1)
    with torch.no_grad():
        s.alpha.copy_(moved)
    assert float(s.arch_penalty().detach()) < float(penalty.detach())


@pytest.mark.parametrize(("settings", "message"), [
    ({"drnas_reg": "l1"}, "drnas_reg='l1' is not a DrNAS regulariser (allowed: l2, kl)"),
    ({"drnas_reg_scale": -1e-3}, "drnas_reg_scale=-0.001 must be a finite number, 0 or more"),
    ({"drnas_reg_scale": "big"}, "drnas_reg_scale='big' must be a finite number"),
    ({"drnas_reg_scale": float("nan")}, "drnas_reg_scale=nan must be a finite number"),
    ({"epochs": {"drnas": 0}}, "epochs: drnas=0"),
])
def test_bad_drnas_settings_are_one_clear_error(settings, message):
    with pytest.raises(RecipeError) as err:
        OneShotConfig.from_dict(settings, source="--set")
    assert message in str(err.value)


TINY = ["--set", "C=2", "--set", "train_images=64", "--set", "valid_images=64", "--set", "batch_size=32",
        "--set", "eval_images=32", "--set", "bn_batches=1", "--set", "epochs={darts: 1, drnas: 2}"]


def test_bench_runs_drnas_end_to_end_and_keeps_runs_made_before_drnas_existed(tmp_path, capsys):
    images, data = shared_data("images/cifar10_jpg.tar.gz"), shared_data("nasbench201")
    out = tmp_path / "drnas"
    base = ["bench", "nb201-oneshot", "--images", str(images), "--data", str(data), "--seeds", "1", "--seed", "4",
            "--out", str(out), *TINY]
    assert main([*base, "--strategies", "drnas,darts"]) == 0
    md = (out / "results.md").read_text()
    for row in ("**DrNAS (Dirichlet)** (this run) | 1 |", "DrNAS (published) | | 94.36 ± 0.00 | 73.51 ± 0.00 | 46.34",
                "| DrNAS (Dirichlet) | ", "Dirichlet mean", "sum of β on an edge", "regulariser l2 × 0.001"):
        assert row in md, row
    runs = json.loads((out / "runs.json").read_text())["runs"]
    run = next(r for r in runs if r["strategy"] == "drnas")
    table = load_nb201(data)
    i = table.index_of(run["cell"])
    assert {d: run["table"][d] for d in DATASETS} == pytest.approx({d: float(table.test200[d][i]) for d in DATASETS})
    w = torch.tensor(run["extra"]["final_weights"])
    assert torch.allclose(w.sum(-1), torch.ones(6))
    assert NB201Cell(tuple(OPS[k] for k in w.argmax(-1))) == NB201Cell.from_str(run["cell"])
    assert run["steps"] == 4 and run["config"]["drnas_reg"] == "l2" and run["config"]["drnas_reg_scale"] == 1e-3
    first, last = run["history"][0]["concentration"], run["extra"]["final_concentration"]
    assert first != last and len(last) == 6 and all(len(row) == 5 for row in last)
    assert f"`{run['cell']}`" in md and (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    # a runs.json written before DrNAS existed (no DrNAS settings, no DrNAS epochs) is still reported
    stored = json.loads((out / "runs.json").read_text())
    for r in stored["runs"]:
        for key in ("drnas_reg", "drnas_reg_scale"):
            del r["config"][key]
        del r["config"]["epochs"]["drnas"]
    stored["runs"] = [r for r in stored["runs"] if r["strategy"] == "darts"]
    (out / "runs.json").write_text(json.dumps(stored))
    (out / "results.md").unlink()
    capsys.readouterr()
    assert main([*base, "--strategies", "darts", "--report"]) == 0
    assert "resuming: 1 finished run(s)" in capsys.readouterr().out
    assert "**DARTS (first order)** (this run) | 1 |" in (out / "results.md").read_text()
