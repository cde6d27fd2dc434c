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
    if getattr(recipe, "kind", None) == "vision":  # a cell space trained on images (llmnas.vision.recipe)
        from llmnas.space.nb201 import NB201Space

        assert isinstance(load_space(recipe.space), NB201Space)
        assert recipe.train.epochs or recipe.train.max_steps or recipe.train.max_seconds
        return
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
        (["train.batch_size=big"], "quickstart.yaml: train.batch_size='big': must be an integer"),
        (["train.max_seconds=null"], "train: give a budget"),
        (["search.objectives=[loss]"], "search.objectives: 'loss' is not allowed"),
        (["search.objectives=[params, val_loss]"], "the first objective must be val_loss or bits_per_byte"),
        (["search.objectives=[val_loss, params]"], "Optuna cannot prune multi-objective studies"),
        (["search.pruner.kind=sometimes"], "search.pruner.kind='sometimes': not allowed"),
        (["search.constraint_mode=maybe"], "search.constraint_mode='maybe': not allowed"),
        (["data.tokenizer="], "tokenizer"),
        (["data.val_fraction=1.5"], "val_fraction=1.5"),
        (["colour=blue"], "unknown key 'colour'"),
        (["train.batch_size=0"], "quickstart.yaml: train.batch_size=0: must be a positive integer"),
        (["retrain.batch_size=0"], "quickstart.yaml: retrain.batch_size=0: must be a positive integer"),
        (["retrain.lr=-1"], "quickstart.yaml: retrain.lr=-1.0, retrain.min_lr=0.0002: "),
        (["train.lr=.inf"], "quickstart.yaml: train.lr=inf: must be a finite number"),
        (["train.lr=x"], "quickstart.yaml: train.lr='x': must be a number"),
        (["train.max_steps=1.5"], "quickstart.yaml: train.max_steps=1.5: must be an integer or null"),
        (["data.block_size=0"], "quickstart.yaml: data.block_size=0: must be a positive integer"),
        (["data.block_size=0", "data.val_fraction=1.5"],
         "quickstart.yaml: data.block_size=0: must be a positive integer; data.val_fraction=1.5: must be a number"),
        (["data.colour=red"], "quickstart.yaml: data.colour: unknown key"),
        (["data.source=null"], "quickstart.yaml: data.source=null: not allowed"),
        (["data=5"], "quickstart.yaml: data: must be a mapping of keys, got a number"),
        (["search.heartbeat_seconds=0"], "quickstart.yaml: search.heartbeat_seconds=0: must be a positive integer"),
        (["search.grace_seconds=-5"], "quickstart.yaml: search.grace_seconds=-5: must be a positive integer"),
        (["search.grace_seconds=30"], "search.grace_seconds=30: must be greater than search.heartbeat_seconds=30"),
        (["search.timeout=-5"], "quickstart.yaml: search.timeout=-5.0: must be a positive number of seconds or null"),
        (["search.timeout=0"], "quickstart.yaml: search.timeout=0.0: must be a positive number"),
        (["search.n_trials=0"], "quickstart.yaml: search.n_trials=0: must be a positive integer"),
        (["search.workers=-1"], "quickstart.yaml: search.workers=-1: must be a positive integer"),
        (["search.top_k=0"], "quickstart.yaml: search.top_k=0: must be a positive integer"),
        (["search.seed=-1"], "quickstart.yaml: search.seed=-1: must be a non-negative integer"),
        (["search.sampler=annealing"], "quickstart.yaml: search.sampler='annealing': not allowed .allowed: random"),
        (["search.sampler_options.size=3"], "search.sampler_options.size: sampler 'evolution' has no such option"),
        (["search.constraints.max_params=0"], "quickstart.yaml: search.constraints.max_params=0: must be a positive"),
        (["search.constraints.max_parms=9"], "quickstart.yaml: search.constraints.max_parms: unknown key"),
        (["search.constraints={min_params: 5, max_params: 3}"], "search.constraints.min_params=5: must be <= max_"),
        (["search.pruner=5"], "quickstart.yaml: search.pruner=5: must be a pruner name or a mapping"),
        (["search.pruner.options=5"], "quickstart.yaml: search.pruner.options=5: must be a mapping"),
        (["search.save_checkpoints=3"], "quickstart.yaml: search.save_checkpoints=3: must be true or false"),
        (["study=../elsewhere"], "quickstart.yaml: study='../elsewhere': must be a name, not a path"),
        (["space=no_such_space"], "quickstart.yaml: space='no_such_space': no such file .give a space YAML file or"),
        (["run_dir=5"], "quickstart.yaml: run_dir=5: must be a non-empty string"),
        (["train.lr.peak=1"], "--set 'train.lr.peak=1': train.lr in .*quickstart.yaml is a number, not a mapping"),
        (["train..lr=1"], "expected KEY=VALUE with a dotted KEY"),
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


def test_numbers_with_exponents_are_numbers() -> None:
    recipe = load_recipe("quickstart", ["train.lr=1e-3", "train.min_lr=5E-5", "train.max_steps=1e4",
                                        "data.max_bytes=2e6", "search.constraints.max_params=8e5"])
    assert recipe.train.lr == 0.001 and recipe.train.min_lr == 5e-5
    assert recipe.train.max_steps == 10_000 and isinstance(recipe.train.max_steps, int)
    assert recipe.data.max_bytes == 2_000_000 and isinstance(recipe.data.max_bytes, int)
    assert recipe.search.constraints == {"max_params": 800_000}


def test_exponent_numbers_in_a_recipe_file(tmp_path) -> None:
    text = (RECIPES_DIR / "quickstart.yaml").read_text().replace("lr: 2.0e-3", "lr: 2e-3")
    (tmp_path / "r.yaml").write_text(text)
    assert load_recipe(tmp_path / "r.yaml").train.lr == 0.002


def test_another_sampler_by_override_drops_the_files_sampler_options() -> None:
    assert load_recipe("quickstart").search.sampler_options  # evolution's population_size, sample_size
    recipe = load_recipe("quickstart", ["search.sampler=tpe"])
    assert recipe.search.sampler == "tpe" and recipe.search.sampler_options == {}
    recipe = load_recipe("quickstart", ["search.sampler=tpe", "search.sampler_options.n_startup_trials=3"])
    assert recipe.search.sampler_options == {"n_startup_trials": 3}
    assert load_recipe("quickstart", ["search.sampler=evolution"]).search.sampler_options  # same sampler: kept


def test_unreadable_recipe_files(tmp_path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("study: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 10\)"):
        load_recipe(tmp_path / "latin1.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(RecipeError, match="empty.yaml: the file is empty"):
        load_recipe(tmp_path / "empty.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(RecipeError, match="dir.yaml: is a directory"):
        load_recipe(tmp_path / "dir.yaml")
    with pytest.raises(RecipeError, match=r"recipe 'quikstart': no such file, and not a shipped recipe \(shipped: "):
        load_recipe("quikstart")
