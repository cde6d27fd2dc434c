from __future__ import annotations

from pathlib import Path

import pytest

from llmnas.errors import RecipeError
from llmnas.recipe import RECIPES_DIR, load_recipe, recipe_from_dict
from llmnas.space import TransformerSpace, load_space

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))


def test_there_are_shipped_recipes() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "shakespeare_char", "wikitext_small"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_against_its_schema(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.study and recipe.source == str(path)
    assert isinstance(load_space(recipe.space), TransformerSpace)
    assert recipe.train.max_steps or recipe.train.max_tokens or recipe.train.max_seconds
    if recipe.retrain is not None:
        assert recipe.retrain.max_steps or recipe.retrain.max_tokens or recipe.retrain.max_seconds
    # The block size fits the space's windows.
    load_space(recipe.space).with_max_seq_len(recipe.data.block_size)


def test_every_accelerate_config_is_valid_yaml_for_accelerate() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    configs = sorted((RECIPES_DIR / "accelerate").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"single_gpu", "multi_gpu", "deepspeed_zero2", "cpu_ddp"}
    for path in configs:
        config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own reader: unknown keys raise
        assert config.num_processes >= 1


def test_overrides_by_dotted_path() -> None:
    recipe = load_recipe("quickstart", ["train.max_seconds=3", "search.sampler=tpe", "data.block_size=64",
                                        "search.objectives=[val_loss, params]", "search.pruner.kind=none"])
    assert recipe.train.max_seconds == 3.0
    assert recipe.search.sampler == "tpe"
    assert recipe.data.block_size == 64
    assert recipe.search.objectives == ("val_loss", "params")
    assert recipe.search.directions == ["minimize", "minimize"]


def test_retrain_budget_replaces_the_trial_budget() -> None:
    base = {"study": "s", "space": "tiny", "data": {"source": "stdlib", "block_size": 64},
            "train": {"max_seconds": 20, "lr": 0.003}}
    recipe = recipe_from_dict({**base, "retrain": {"max_steps": 500}})
    assert recipe.train.max_seconds == 20 and recipe.retrain.max_seconds is None
    assert recipe.retrain.max_steps == 500 and recipe.retrain.lr == 0.003
    assert recipe_from_dict(base).retrain is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.max_stepz=3"], "quickstart.yaml: train.max_stepz: unknown key"),
        (["train.batch_size=big"], "train.batch_size: 'big' must be int"),
        (["train.max_seconds=null"], "train: give a budget"),
        (["search.objectives=[loss]"], "search.objectives: 'loss' is not allowed"),
        (["search.objectives=[params, val_loss]"], "the first objective must be val_loss or bits_per_byte"),
        (["search.objectives=[val_loss, params]"], "Optuna cannot prune multi-objective studies"),
        (["search.pruner.kind=sometimes"], "search.pruner.kind: 'sometimes' is not allowed"),
        (["search.constraint_mode=maybe"], "search.constraint_mode: 'maybe' is not allowed"),
        (["data.tokenizer="], "tokenizer"),
        (["data.val_fraction=1.5"], "val_fraction=1.5"),
        (["colour=blue"], "unknown key 'colour'"),
        (["train"], "expected KEY=VALUE"),
    ],
)
def test_bad_recipes_name_file_and_key(overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("[", r"\[")):
        load_recipe("quickstart", overrides)


def test_missing_and_malformed_recipe_files(tmp_path) -> None:
    with pytest.raises(RecipeError, match="nope.yaml: file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: x\nspace: [tiny\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    bad.write_text("study: x\nspace: tiny\ntrain: {max_steps: 3}\n")
    with pytest.raises(RecipeError, match="bad.yaml: data: missing"):
        load_recipe(bad)
