"""``llmnas search`` on the NAS-Bench-201 space with real training: trials, ground truth, resume, bad recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from llmnas.errors import RecipeError
from llmnas.recipe import load_recipe
from llmnas.search import run_search
from llmnas.vision.recipe import VisionRecipe
from tests.conftest import REPO, shared_data

SHIPPED = REPO / "recipes" / "nb201_cifar10.yaml"


def tiny_recipe(tmp_path: Path, source: Path, **changes) -> Path:
    """The shipped recipe, made tiny: the handful of images, C=4, N=1, 2 steps per trial."""
    data = yaml.safe_load(SHIPPED.read_text())
    data["data"] = {"source": str(source), "valid_images": 20}
    data["train"] = {**data["train"], "C": 4, "N": 1, "batch_size": 10, "train_images": 20, "epochs": None,
                     "max_steps": 2}
    data["search"] = {**data["search"], "n_trials": 4, "sampler": "random", "sampler_options": {}}
    data["truth"] = str(shared_data("nasbench201"))
    data["run_dir"] = str(tmp_path / "runs")
    data.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_recipe_loads_as_a_vision_recipe() -> None:
    recipe = load_recipe("nb201_cifar10")
    assert isinstance(recipe, VisionRecipe) and recipe.search.objectives == ("val_error",)
    assert recipe.train.C == 8 and recipe.retrain is not None and recipe.retrain.train_images == 20000


def test_search_trains_each_cell_and_records_the_ground_truth(tiny_folder: Path, tmp_path: Path) -> None:
    recipe = load_recipe(tiny_recipe(tmp_path, tiny_folder))
    summary = run_search(recipe, show_progress=False)
    trials = summary.study.get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    table = None
    for t in trials:
        a = t.user_attrs
        assert t.value == pytest.approx(100.0 - a["val_acc"]) and a["images_per_second"] > 0
        truth = a["ground_truth"]
        assert "never used" in truth["note"] and set(truth) >= {"index", "cifar10_test200", "cifar100_test200"}
        if table is None:
            from llmnas.benchmarks.nb201 import load_nb201

            table = load_nb201(shared_data("nasbench201"))
        assert table.arch_strs[truth["index"]] == a["cell"]
        assert truth["cifar10_test200"] == pytest.approx(table.metric("test200", "cifar10")[truth["index"]], abs=1e-4)
        assert "ground_truth" not in t.params  # only the six edges are Optuna parameters
    assert (summary.study_dir / "summary.md").read_text().count("|") > 10
    # resume: the study already holds its trials; more trials train only the new ones
    again = run_search(recipe, n_trials=5, show_progress=False)
    assert len(again.study.get_trials()) == 5 and again.new_trials == 1


def test_resuming_with_another_budget_is_refused(tiny_folder: Path, tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path, tiny_folder)
    run_search(load_recipe(path, ["search.n_trials=1"]), show_progress=False)
    with pytest.raises(RecipeError, match="different train"):
        run_search(load_recipe(path, ["search.n_trials=2", "train.max_steps=3"]), show_progress=False)


def test_successive_halving_prunes_and_a_pruned_cell_is_pruned_again_without_training(
        tiny_folder: Path, tmp_path: Path) -> None:
    # eta 100: past the first trial, a trial reaches epoch 2 only with the best epoch-1 loss so far
    path = tiny_recipe(tmp_path, tiny_folder)
    recipe = load_recipe(path, ["train.max_steps=null", "train.epochs=2", "train.eval_every_epochs=1",
                                "search.objectives=[val_loss]", "search.n_trials=6",
                                "search.pruner.kind=successive_halving",
                                "search.pruner.options={min_resource: 1, reduction_factor: 100}"])
    summary = run_search(recipe, show_progress=False)
    trials = summary.study.get_trials()
    states = [t.state for t in trials]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 6 and states[0] == TrialState.COMPLETE and pruned, states
    for t in complete:  # trained the whole budget: the epoch-1 report, then the final value
        assert set(t.intermediate_values) == {1} and t.value == pytest.approx(t.user_attrs["val_loss"])
    for t in pruned:
        assert set(t.intermediate_values) == {1} and t.user_attrs["pruned_at_step"] == 1
        earlier = [u.intermediate_values[1] for u in trials[:t.number]]
        assert t.intermediate_values[1] > min(earlier)  # not the best so far at the rung: successive halving
        assert "val_loss" not in t.user_attrs  # the final measurement never ran
    for t in complete[1:]:
        assert t.intermediate_values[1] <= min(u.intermediate_values[1] for u in trials[:t.number])
    # the same cell again: the pruner hears the earlier trial's figures and prunes it without training
    summary.study.enqueue_trial(pruned[0].params)
    again = run_search(recipe, n_trials=7, show_progress=False).study.get_trials()[-1]
    assert again.state == TrialState.PRUNED and again.user_attrs["reused_from"] == pruned[0].number
    assert again.intermediate_values == pruned[0].intermediate_values and "train_seconds" not in again.user_attrs


@pytest.mark.parametrize(("changes", "match"), [
    ({"search": {"pruner": "median"}}, "needs train.eval_every_epochs"),
    ({"search": {"pruner": "median", "objectives": ["val_error", "params"]}, "train": {"epochs": 2,
      "eval_every_epochs": 1}}, "cannot prune multi-objective"),
    ({"search": {"pruner": "halving"}}, "search.pruner.kind='halving': not allowed"),
    ({"search": {"objectives": ["val_loss_typo"]}}, "search.objectives"),
    ({"search": {"evaluator": "proxy"}}, "allowed: scratch"),
    ({"train": {"C": 8, "epochs": 0}}, "train.epochs=0"),
    ({"train": {"C": 8, "epochs": 1, "layers": 3}}, "train.layers: unknown key"),
    ({"tokenizer": "byte"}, "unknown key 'tokenizer'"),
])
def test_bad_vision_recipes(tiny_folder: Path, tmp_path: Path, changes: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        load_recipe(tiny_recipe(tmp_path, tiny_folder, **changes))


def test_a_missing_truth_folder_stops_the_search_before_anything_is_written(tiny_folder: Path, tmp_path: Path) -> None:
    recipe = load_recipe(tiny_recipe(tmp_path, tiny_folder, truth="/nonexistent/tables"))  # loads without it
    with pytest.raises(RecipeError, match="truth='/nonexistent/tables': no such folder"):
        run_search(recipe, show_progress=False)
    assert not (tmp_path / "runs").exists()


def test_cli_errors_are_one_line_and_leave_nothing(tmp_path: Path, tiny_folder: Path) -> None:
    missing = tiny_recipe(tmp_path, tmp_path / "no_images_here")
    done = subprocess.run([sys.executable, "-m", "llmnas", "search", str(missing), "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "data.source" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "nb201_cifar10" / "study.db").exists()  # no study created
    bad_cell = subprocess.run([sys.executable, "eval/nb201_train/run.py", "--stages", "fmnist", "--cell",
                               "|nor_conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "--out", str(tmp_path / "o")],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad_cell.returncode == 2 and "unknown operation 'nor_conv_5x5'" in bad_cell.stderr
    assert not (tmp_path / "o").exists()
    bad_shard = subprocess.run([sys.executable, "eval/nb201_train/run.py", "--stages", "rank", "--shard", "2/2",
                                "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad_shard.returncode == 2 and "--shard '2/2': must be K/N with 0 <= K < N" in bad_shard.stderr
    assert not (tmp_path / "o").exists()
