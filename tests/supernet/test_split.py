"""Few-shot supernets (``supernet.split``): one supernet per value of one decision, trained, resumed, loaded
and used by the search and the export as one supernet.

Real components: the quickstart recipe's corpus and space (as in ``test_train.py``), and for the workflow
the command line on the micro space, as the README gives it.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from optuna.trial import TrialState

from llmnas.cli import main
from llmnas.errors import ArchitectureError, RecipeError
from llmnas.export.checkpoint import CheckpointError
from llmnas.search import load_study, select_trial, trial_arch
from llmnas.supernet import SuperNet, SupernetConfig, evaluate_subnet, load_supernet
from llmnas.supernet.checkpoint import LATEST
from llmnas.supernet.split import MANIFEST, SplitSuperNet, decision_value, split_values
from llmnas.supernet.train import SandwichPlan
from llmnas.train import make_accelerator
from tests.conftest import MICRO_SPACE
from tests.supernet.test_train import (  # noqa: F401  (fixture)
    POOL,
    assert_bitwise_equal,
    quick,
    recipe_for,
    run,
    state_of,
)

SPLIT = SupernetConfig(pool_size=POOL, random_subnets=2, split="norm")


def test_each_part_trains_only_subnets_of_its_value(quick) -> None:  # noqa: F811
    space = quick[2]
    assert split_values(space, "norm") == ["rmsnorm", "layernorm"]
    assert split_values(space, "d_model") == [64, 96, 128, 160]
    for decision, value in (("norm", "layernorm"), ("pos", "learned"), ("d_model", 64), ("n_layers", 6)):
        plan = SandwichPlan(space, SupernetConfig(pool_size=POOL, random_subnets=3), (decision, value))
        archs = [a for step in range(20) for _, a in plan.archs(step, step / 20)]
        assert {decision_value(a, decision) for a in archs} == {value}
        assert decision_value(plan.largest, decision) == value and decision_value(plan.smallest, decision) == value
        assert all(space.is_feasible(space.encode(a)) for a in archs)
        assert len({a.id for a in archs}) > 40  # random within the part, not one architecture
        assert plan.largest.param_counts().total >= max(a.param_counts().total for a in archs)
    whole = SandwichPlan(space, SupernetConfig(pool_size=POOL, random_subnets=3))
    assert {a.norm for step in range(20) for _, a in whole.archs(step, 0.0)} == {"rmsnorm", "layernorm"}


def test_balance_draws_each_width_equally_often(quick) -> None:  # noqa: F811
    import collections

    space = quick[2].with_constraints(type(quick[2].constraints)(max_params=1_000_000))
    counts = {}
    for balance in (None, "d_model"):
        plan = SandwichPlan(space, SupernetConfig(pool_size=POOL, largest=False, smallest=False, random_subnets=8,
                                                 balance=balance))
        archs = [a for step in range(150) for _, a in plan.archs(step, 0.0)]
        assert all(a.param_counts().total <= 1_000_000 for a in archs)
        counts[balance] = collections.Counter(a.d_model for a in archs)
    # under the cap, uniform decisions seldom give the widest models; balanced draws give each width ~1/4
    assert counts[None][160] < 0.15 * 1200 and set(counts["d_model"]) == {64, 96, 128, 160}
    assert all(abs(n - 300) < 60 for n in counts["d_model"].values()), counts["d_model"]
    # within a part of a split supernet too
    plan = SandwichPlan(space, SupernetConfig(pool_size=POOL, random_subnets=8, balance="d_model"), ("pos", "rope"))
    archs = [a for step in range(50) for _, a in plan.archs(step, 0.0)]
    assert {a.pos for a in archs} == {"rope"} and len({a.d_model for a in archs}) == 4
    with pytest.raises(RecipeError, match="split on .d_model. already"):
        SupernetConfig(split="d_model", balance="d_model")
    with pytest.raises(RecipeError, match="supernet.balance='tie_embeddings': space 'tiny' does not choose"):
        SandwichPlan(space, SupernetConfig(pool_size=POOL, balance="tie_embeddings"))


def test_balance_list_draws_each_width_then_each_depth_feasible_at_it_equally_often(quick) -> None:  # noqa: F811
    import collections

    space = quick[2].with_constraints(type(quick[2].constraints)(max_params=1_000_000))
    plan = SandwichPlan(space, SupernetConfig(pool_size=POOL, largest=False, smallest=False, random_subnets=8,
                                             balance=["d_model", "n_layers"]))
    archs = [a for step in range(100) for _, a in plan.archs(step, 0.0)]
    assert all(a.param_counts().total <= 1_000_000 for a in archs)
    cells = collections.Counter((a.d_model, len(a.blocks)) for a in archs)
    widths = collections.Counter(a.d_model for a in archs)
    assert set(widths) == {64, 96, 128, 160} and all(abs(n - 200) < 50 for n in widths.values()), widths
    for width, n in widths.items():
        depths = plan.feasible("n_layers", {"d_model": width})
        assert {d for w, d in cells if w == width} == set(depths)  # every feasible depth, no other
        # each depth of the width about equally often (expected n / len(depths), about 40-50 here)
        assert all(cells[width, d] > 0.5 * n / len(depths) for d in depths), (width, cells)
    # the widest models cannot be 6 layers deep under the cap: their depths stop earlier
    assert plan.feasible("n_layers", {"d_model": 160}) == [2, 3, 4, 5]
    # one decision listed alone is that decision (an existing supernet's record is unchanged)
    assert SupernetConfig(balance=["d_model"]).balance == "d_model"
    assert SupernetConfig(balance=("d_model", "n_layers")).balanced_decisions == ("d_model", "n_layers")
    for bad, match in ((["d_model", "d_model"], "list each decision once"), ([], "list each decision once"),
                       (["d_model", "heads"], "'heads' is not one of d_model, n_layers"),
                       ("width", "'width' is not one of")):
        with pytest.raises(RecipeError, match=match):
            SupernetConfig(balance=bad)
    with pytest.raises(RecipeError, match="split on 'pos' already"):
        SupernetConfig(split="pos", balance=["d_model", "pos"])
    # a recipe writes the list in YAML, on the command line too; a wrong entry names the recipe file
    cache = quick[4]
    assert recipe_for(cache, "supernet.balance=[d_model, n_layers]").supernet.balanced_decisions == ("d_model",
                                                                                                   "n_layers")
    with pytest.raises(RecipeError, match=r"quickstart.yaml: supernet.balance=\['d_model', 'heads'\]: 'heads' is not"):
        recipe_for(cache, "supernet.balance=[d_model, heads]")


def test_split_supernet_trains_one_part_per_value_and_scores_each_subnet_with_its_part(quick, tmp_path) -> None:  # noqa: F811
    recipe, data, space, cfg, _ = quick
    out = tmp_path / "split"
    result = run(quick, out, cfg, SPLIT)
    assert result.parts == 2 and result.finished and result.steps == cfg.max_steps and result.path == out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["decision"] == "norm" and manifest["values"] == ["rmsnorm", "layernorm"]
    assert sorted(p.name for p in out.iterdir()) == ["norm-layernorm", "norm-rmsnorm", MANIFEST]
    one = run(quick, tmp_path / "one", cfg, SupernetConfig(pool_size=POOL, random_subnets=2))
    assert result.tokens == 2 * one.tokens  # each part trains the whole budget
    assert set(result.scores) == {f"{v}/{r}" for v in ("rmsnorm", "layernorm") for r in ("largest", "smallest")}

    ckpt = load_supernet(out)
    assert isinstance(ckpt.net, SplitSuperNet) and ckpt.path == out and ckpt.meta["split"]["decision"] == "norm"
    parts = {v: load_supernet(out / f"norm-{v}") for v in ("rmsnorm", "layernorm")}
    assert not torch.equal(parts["rmsnorm"].net.embed, parts["layernorm"].net.embed)  # trained apart
    assert ckpt.net.num_parameters() == 2 * parts["rmsnorm"].net.num_parameters()
    assert ckpt.id not in {p.id for p in parts.values()} and ckpt.tokenizer.is_dir()
    acc = make_accelerator(cfg)
    idx = torch.randint(0, space.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    for seed in range(6):
        arch = space.sample(seed)
        own = parts[arch.norm].net
        assert evaluate_subnet(ckpt.net, arch, data, cfg, acc).val_loss == evaluate_subnet(own, arch, data, cfg,
                                                                                            acc).val_loss
        with torch.no_grad():
            logits = ckpt.net(idx, arch).logits
            assert torch.equal(logits, own(idx, arch).logits)
            assert torch.allclose(ckpt.net.extract(arch)(idx).logits, logits, atol=1e-5)
    # the interface a SuperNet has: an architecture outside every part is refused by name
    lone = SplitSuperNet("norm", {"rmsnorm": parts["rmsnorm"].net})
    arch = next(a for a in (space.sample(s) for s in range(50)) if a.norm == "layernorm")
    with pytest.raises(ArchitectureError, match="norm='layernorm'.*holds parts for rmsnorm only"):
        lone.check(arch)


def test_split_stopped_in_either_part_resumes_to_the_uninterrupted_weights(quick, tmp_path) -> None:  # noqa: F811
    cfg = quick[3]
    whole = run(quick, tmp_path / "whole", cfg, SPLIT)
    cut = tmp_path / "cut"
    first = run(quick, cut, cfg, SPLIT, stop_after=2)  # stopped in the first part
    assert not first.finished and not (cut / "norm-layernorm").exists()
    with pytest.raises(CheckpointError, match="norm=rmsnorm.*stopped at step 2"):
        load_supernet(cut)
    second = run(quick, cut, cfg, SPLIT, stop_after=cfg.max_steps + 2)  # the first part ends, the second stops
    assert not second.finished and second.resumed_from == 2
    assert (cut / "norm-layernorm" / LATEST).read_text().strip() == "checkpoint-2"
    third = run(quick, cut, cfg, SPLIT)
    assert third.finished and third.tokens == whole.tokens
    for part in ("norm-rmsnorm", "norm-layernorm"):
        assert_bitwise_equal(state_of(load_supernet(cut / part).path), state_of(load_supernet(tmp_path / "whole" /
                                                                                               part).path))
    assert load_supernet(cut).id == load_supernet(tmp_path / "whole").id


def test_split_folders_and_recipes_that_do_not_match_are_refused(quick, tmp_path) -> None:  # noqa: F811
    cfg = quick[3].replace(max_steps=1)
    split, plain = tmp_path / "split", tmp_path / "plain"
    run(quick, split, cfg, SPLIT)
    run(quick, plain, cfg, SupernetConfig(pool_size=POOL, random_subnets=1))
    with pytest.raises(RecipeError, match="split on 'norm'.*no supernet.split"):
        run(quick, split, cfg, SupernetConfig(pool_size=POOL, random_subnets=2))
    with pytest.raises(RecipeError, match="split on 'norm'.*the recipe splits on 'pos'"):
        run(quick, split, cfg, SupernetConfig(pool_size=POOL, random_subnets=2, split="pos"))
    with pytest.raises(RecipeError, match="not split and the recipe has supernet.split='norm'"):
        run(quick, plain, cfg, SPLIT)
    with pytest.raises(RecipeError, match="does not choose tie_embeddings.*d_model, n_layers, pos, norm"):
        run(quick, tmp_path / "tied", cfg, SupernetConfig(pool_size=POOL, split="tie_embeddings"))
    with pytest.raises(RecipeError, match="supernet.split='heads': must be one of d_model, n_layers"):
        SupernetConfig(split="heads")
    (split / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="split.json: unreadable"):
        load_supernet(split)


def test_search_and_export_with_a_split_supernet_from_the_command_line(tmp_path, capsys) -> None:
    (tmp_path / "space.yaml").write_text(MICRO_SPACE)
    recipe = {
        "study": "s", "space": str(tmp_path / "space.yaml"), "run_dir": str(tmp_path / "runs"),
        "data": {"source": "stdlib", "tokenizer": "byte", "block_size": 32, "max_bytes": 100_000,
                 "cache_dir": str(tmp_path / "cache"), "holdout": 0.05},
        "train": {"max_steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_blocks": 8, "seed": 3},
        "supernet": {"random_subnets": 1, "pool_size": 50, "split": "pos", "train": {"max_steps": 3}},
        "search": {"evaluator": "supernet", "sampler": "evolution", "n_trials": 8, "seed": 0, "keep_checkpoints": 0},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["supernet", "train", str(path)]) == 0
    assert "2 supernets split on pos, 3 steps each" in capsys.readouterr().out
    assert main(["supernet", "show", str(tmp_path / "runs" / "s" / "supernet")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["split"]["decision"] == "pos" and shown["split"]["values"] == ["rope", "learned"]
    assert main(["search", str(path), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "s"
    study = load_study(run_dir)
    ckpt = load_supernet(run_dir / "supernet")
    assert len(study.trials) == 8 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["supernet_id"] for t in study.trials} == {ckpt.id}
    assert {trial_arch(t).pos for t in study.trials} == {"rope", "learned"}  # both parts scored trials
    capsys.readouterr()
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--trial", "best", "--supernet", "--out", str(out)]) == 0
    assert "weights: inherited from supernet" in capsys.readouterr().out
    arch = trial_arch(select_trial(study, "best"))
    from transformers import AutoModelForCausalLM

    idx = torch.randint(0, arch.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ckpt.net(idx, arch).logits
        got = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()(idx).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert isinstance(ckpt.net.part(arch), SuperNet)
