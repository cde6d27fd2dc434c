"""Supernet training in one process: the sandwich plan, learning, checkpoints and exact resume.

Real components throughout: the quickstart recipe's corpus (the interpreter's standard library, cut to
200 kB), ``prepare_space``, ``make_accelerator`` and :func:`train_supernet`, with budgets of a few steps.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmnas.errors import RecipeError
from llmnas.recipe import load_recipe
from llmnas.search.engine import prepare_space, recipe_data
from llmnas.supernet import SuperNet, SupernetConfig, evaluate_subnet
from llmnas.supernet.checkpoint import LATEST, META, STATE, WEIGHTS, latest_checkpoint, load_supernet, read_meta
from llmnas.supernet.train import SandwichPlan, size_key, train_supernet
from llmnas.train import make_accelerator

BLOCK = 72  # above the tiny space's largest window (64); shorter than the recipe's 128 for speed
POOL = 200  # a smaller pool than the default 2000: the plan is built in a fraction of the time


def recipe_for(cache: Path, *extra: str):
    return load_recipe("quickstart", ["data.max_bytes=200000", f"data.block_size={BLOCK}", f"data.cache_dir={cache}",
                                      *extra])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quickstart recipe's data and space, and a small training budget (``max_steps`` set per test)."""
    cache = tmp_path_factory.mktemp("tokens")
    recipe = recipe_for(cache)
    data = recipe_data(recipe)
    space = prepare_space(recipe, data)
    cfg = recipe.train.replace(max_seconds=None, max_steps=4, batch_size=2, warmup_steps=2, eval_blocks=4,
                               eval_batch_size=8, mixed_precision="no", log_interval=0)
    return recipe, data, space, cfg, cache


def run(quick, out: Path, cfg=None, sn: SupernetConfig | None = None, **kwargs):
    _, data, space, base, _ = quick
    cfg = cfg or base
    sn = sn or SupernetConfig(pool_size=POOL)
    return train_supernet(space, data, sn, cfg, make_accelerator(cfg), out, **kwargs)


def state_of(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint holds for training: the supernet's weights and the optimizer's state."""
    tensors = {f"weights/{k}": v for k, v in load_file(str(path / WEIGHTS)).items()}
    optim = torch.load(path / STATE / "optimizer.bin", weights_only=True)
    for pid, st in optim["state"].items():
        for k, v in st.items():
            tensors[f"optimizer/{pid}/{k}"] = torch.as_tensor(v)
    return tensors


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert any(k.startswith("optimizer/") and k.endswith("exp_avg_sq") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- learning
def test_largest_subnet_learns_in_30_steps(quick, tmp_path) -> None:
    _, data, space, base, _ = quick
    cfg = base.replace(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=3, log_interval=1)
    sn = SupernetConfig(pool_size=POOL, random_subnets=1)
    plan = SandwichPlan(space, sn)
    torch.manual_seed(cfg.seed)
    initial = evaluate_subnet(SuperNet(space), plan.largest, data, cfg, make_accelerator(cfg)).val_loss
    lines: list[str] = []
    result = run(quick, tmp_path / "sn", cfg, sn, log=lines.append)
    largest = [float(m.group(1)) for line in lines if (m := re.match(r"step \d+: largest ([0-9.]+)", line))]
    assert len(largest) == 30, lines
    assert np.mean(largest[-5:]) < np.mean(largest[:5]) - 0.5, largest
    assert result.steps == 30 and result.resumed_from is None
    assert result.scores["largest"] < initial - 0.5, (initial, result.scores)
    assert result.scores["smallest"] < initial
    assert result.tokens == 30 * 3 * cfg.batch_size * BLOCK  # 3 subnets per step
    assert result.path == tmp_path / "sn" / "checkpoint-30" and latest_checkpoint(tmp_path / "sn") == result.path

    # the checkpoint loads back as a supernet whose largest subnet scores what training reported
    ckpt = load_supernet(tmp_path / "sn")
    assert ckpt.step == 30 and ckpt.meta["finished"] is True
    again = evaluate_subnet(ckpt.net, plan.largest, data, cfg, make_accelerator(cfg)).val_loss
    assert again == pytest.approx(result.scores["largest"], rel=1e-5)

    # a finished run started again does nothing: same result, files untouched
    before = {p: digest(p) for p in (tmp_path / "sn").rglob("*") if p.is_file()}
    lines.clear()
    same = run(quick, tmp_path / "sn", cfg, sn, log=lines.append)
    assert same.path == result.path and same.steps == 30 and same.resumed_from == 30
    assert same.scores == pytest.approx(result.scores)
    assert any("nothing to do" in line for line in lines), lines
    assert {p: digest(p) for p in (tmp_path / "sn").rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------- the sandwich plan
def test_sandwich_plan_is_deterministic_and_meets_the_recipes_constraints(quick) -> None:
    recipe = recipe_for(quick[4], "search.constraints.max_params=400000")
    space = prepare_space(recipe, quick[1])
    assert space.constraints.max_params == 400_000
    sn = SupernetConfig(pool_size=POOL, random_subnets=3, seed=5)
    one, two = SandwichPlan(space, sn), SandwichPlan(space, sn)
    assert one.largest == two.largest and one.smallest == two.smallest
    steps = [one.archs(t, t / 20) for t in range(20)]
    assert steps == [two.archs(t, t / 20) for t in range(20)]
    assert steps[7] == one.archs(7, 7 / 20)  # a pure function of the step (what a resumed run relies on)
    for pairs in steps:
        assert [role for role, _ in pairs] == ["largest", "smallest", "random", "random", "random"]
        for _, arch in pairs:
            assert not space.constraints.violations(arch), arch.summary()
            assert arch.param_counts().total <= 400_000
            space.encode(arch)  # an architecture of the space
    randoms = {a.id for pairs in steps for role, a in pairs if role == "random"}
    assert len(randoms) > 40  # random draws, different at each step
    # the largest and smallest are the extremes among feasible architectures
    feasible = [space.decode(space.sample_params(np.random.default_rng(i))) for i in range(300)]
    assert all(size_key(one.largest) >= size_key(a) for a in feasible)
    assert all(size_key(one.smallest) <= size_key(a) for a in feasible)
    assert one.largest.param_counts().total > 300_000  # close to the limit, not merely under it
    # without the limit the largest subnet is much larger
    free = SandwichPlan(prepare_space(recipe_for(quick[4]), quick[1]), sn)
    assert free.largest.param_counts().total > 1_000_000
    # another seed draws other random subnets
    other = SandwichPlan(space, SupernetConfig(pool_size=POOL, random_subnets=3, seed=6))
    assert [a.id for _, a in other.archs(3, 0.1)][2:] != [a.id for _, a in one.archs(3, 0.1)][2:]
    for plan in (one, other):
        assert not space.constraints.violations(plan.largest) and not space.constraints.violations(plan.smallest)


def test_progressive_shrinking_draws_larger_subnets_early(quick) -> None:
    space = quick[2]
    stages = 4
    plan = SandwichPlan(space, SupernetConfig(pool_size=POOL, random_subnets=4, shrink_stages=stages))
    flat = SandwichPlan(space, SupernetConfig(pool_size=POOL, random_subnets=4))
    floors = [plan.threshold(p) for p in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert floors == sorted(floors, reverse=True) and floors[0] > floors[-1]
    assert floors[-1] == plan.pool_params.min()  # the last stage draws from the whole space
    assert flat.threshold(0.0) == 0

    def sizes(p: SandwichPlan, progress: float) -> list[int]:
        return [a.param_counts().total for t in range(12) for role, a in p.archs(t, progress) if role == "random"]

    early, late = sizes(plan, 0.05), sizes(plan, 0.95)
    assert min(early) >= plan.threshold(0.05) == np.quantile(plan.pool_params, 0.75).astype(int)
    assert np.median(early) > 1.5 * np.median(late)
    assert np.median(early) > 1.5 * np.median(sizes(flat, 0.05))


# ---------------------------------------------------------------------- checkpoints and resume
@pytest.mark.parametrize("variant", ["plain", "accum2-distill-dropout"])
def test_stop_and_resume_equals_an_uninterrupted_run(quick, tmp_path, variant: str) -> None:
    base = quick[3]
    if variant == "plain":
        cfg, sn = base, SupernetConfig(pool_size=POOL)
    else:
        cfg = base.replace(grad_accum=2, dropout=0.1)
        sn = SupernetConfig(pool_size=POOL, distill=0.5, random_subnets=1, shrink_stages=2)
    whole = run(quick, tmp_path / "whole", cfg, sn)
    assert whole.steps == cfg.max_steps and whole.resumed_from is None

    first = run(quick, tmp_path / "cut", cfg, sn, stop_after=2)
    assert first.steps == 2 and first.scores == {}
    meta = read_meta(first.path)
    assert meta["step"] == 2 and meta["finished"] is False
    assert (tmp_path / "cut" / LATEST).read_text().strip() == "checkpoint-2"

    second = run(quick, tmp_path / "cut", cfg, sn)
    assert second.resumed_from == 2 and second.steps == cfg.max_steps
    assert second.tokens == whole.tokens
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [f"checkpoint-{cfg.max_steps}", LATEST]
    assert_bitwise_equal(state_of(second.path), state_of(whole.path))
    assert second.scores == whole.scores


def test_periodic_checkpoints_keep_the_newest_only(quick, tmp_path) -> None:
    cfg = quick[3].replace(log_interval=1, max_steps=5)
    out = tmp_path / "sn"
    seen: dict[int, list[str]] = {}

    def log(line: str) -> None:  # called before the step's checkpoint is written
        if m := re.match(r"step (\d+):", line):
            seen[int(m.group(1))] = sorted(p.name for p in out.glob("checkpoint-*"))

    result = run(quick, out, cfg, SupernetConfig(pool_size=POOL, checkpoint_interval=2, random_subnets=0), log=log)
    assert result.steps == 5
    assert seen == {1: [], 2: [], 3: ["checkpoint-2"], 4: ["checkpoint-2"], 5: ["checkpoint-4"]}
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-5", LATEST]
    assert read_meta(result.path)["finished"] is True
    assert (result.path / "tokenizer").is_dir() and (result.path / STATE).is_dir() and (result.path / META).is_file()


def test_resume_with_another_recipe_names_the_changed_key(quick, tmp_path) -> None:
    cfg = quick[3]
    sn = SupernetConfig(pool_size=POOL, random_subnets=1)
    out = tmp_path / "sn"
    run(quick, out, cfg, sn, stop_after=1)
    before = {p: digest(p) for p in out.rglob("*") if p.is_file()}
    changes = {
        "random_subnets": (cfg, SupernetConfig(pool_size=POOL, random_subnets=2)),
        "distill": (cfg, SupernetConfig(pool_size=POOL, random_subnets=1, distill=0.3)),
        "lr": (cfg.replace(lr=cfg.lr * 2), sn),
        "batch_size": (cfg.replace(batch_size=3), sn),
    }
    for key, (train_cfg, sn_cfg) in changes.items():
        with pytest.raises(RecipeError) as e:
            run(quick, out, train_cfg, sn_cfg)
        message = str(e.value)
        assert key in message and "checkpoint-1" in message, message
        assert "resume with the original recipe" in message
    # another space (its constraints) is refused too
    recipe = recipe_for(quick[4], "search.constraints.max_params=400000")
    other = prepare_space(recipe, quick[1])
    with pytest.raises(RecipeError, match="constraints"):
        train_supernet(other, quick[1], sn, cfg, make_accelerator(cfg), out)
    assert {p: digest(p) for p in out.rglob("*") if p.is_file()} == before
    # checkpoint_interval and the folder may change: the run resumes
    resumed = run(quick, out, cfg, SupernetConfig(pool_size=POOL, random_subnets=1, checkpoint_interval=4))
    assert resumed.resumed_from == 1 and resumed.steps == cfg.max_steps
