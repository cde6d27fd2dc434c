"""``llmnas confirm``: the best cells of a real vision study retrained with more seeds, stored, resumed, sharded."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from llmnas.cli import main
from llmnas.errors import RecipeError
from llmnas.recipe import load_recipe
from llmnas.search import run_search
from llmnas.search.confirm import PREFIX, confirm_vision_study
from llmnas.search.study import StudyError
from llmnas.search.vision import VisionTask
from llmnas.space.nb201 import NB201Cell
from llmnas.vision.train import make_accelerator, train_cell
from tests.vision.test_search import tiny_recipe


@pytest.fixture(scope="module")
def searched_runs(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a finished 4-trial study of the tiny recipe (real images, real training, SQLite)."""
    root = tmp_path_factory.mktemp("searched")
    run_search(load_recipe(tiny_recipe(root, tiny_folder)), show_progress=False)
    return root / "runs"


@pytest.fixture
def searched(searched_runs: Path, tiny_folder: Path, tmp_path: Path):
    """The tiny recipe with its own copy of that study."""
    shutil.copytree(searched_runs, tmp_path / "runs")
    return load_recipe(tiny_recipe(tmp_path, tiny_folder))


def best_distinct(study: optuna.Study, k: int) -> list[int]:
    done = sorted((t for t in study.get_trials() if t.state == TrialState.COMPLETE
                   and "reused_from" not in t.user_attrs), key=lambda t: (t.value, t.number))
    out, seen = [], set()
    for t in done:
        if t.user_attrs["cell_key"] not in seen:
            seen.add(t.user_attrs["cell_key"])
            out.append(t.number)
    return out[:k]


def test_confirm_retrains_the_best_cells_with_each_seed_and_picks_the_best_mean(searched) -> None:
    recipe = searched
    study = optuna.load_study(study_name=recipe.study, storage=recipe.storage_url)
    summary = confirm_vision_study(recipe, top_k=2, seeds=(1, 2), show_progress=False)
    assert [c["trial"] for c in summary.candidates] == best_distinct(study, 2)
    assert summary.trained == 4 and not summary.missing
    # a stored figure is what a fresh training of that cell with that seed measures on the whole validation half
    whole = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, valid_images=None))
    task = VisionTask.from_recipe(whole)
    first = summary.candidates[0]
    _, direct = train_cell(NB201Cell.from_str(first["cell"]), task.data, task.train_idx, {"valid": task.valid_idx},
                           recipe.train.replace(seed=2), make_accelerator(recipe.train))
    assert first["val_acc"]["2"] == direct.accuracy["valid"]
    stored = {k: v for k, v in study.user_attrs.items() if k.startswith(PREFIX)}
    assert len(stored) == 4 and {v["valid_images"] for v in stored.values()} == {len(task.valid_idx)}
    assert len(task.valid_idx) > recipe.data.valid_images  # more images than the search scored on
    for c in summary.candidates:
        assert c["mean"] == pytest.approx(sum(c["val_acc"].values()) / 2)
    best_mean = max(c["mean"] for c in summary.candidates)
    tied = [c["search_rank"] for c in summary.candidates if c["mean"] == best_mean]
    assert summary.pick["mean"] == best_mean and summary.pick["search_rank"] == min(tied)
    text = (recipe.study_dir / "confirm.md").read_text()
    assert "**pick**" in text and "ground truth, unused" in text
    assert json.loads((recipe.study_dir / "confirm.json").read_text())["pick"]["trial"] == summary.pick["trial"]
    # resumed: nothing is trained again, the figures are the stored ones
    again = confirm_vision_study(recipe, top_k=2, seeds=(1, 2), show_progress=False)
    assert again.trained == 0 and again.candidates == summary.candidates and again.pick == summary.pick


def test_shards_share_the_runs_and_another_protocol_is_never_mixed_in(searched) -> None:
    recipe = searched
    confirm_vision_study(recipe, top_k=1, seeds=(1,), show_progress=False)  # whole validation half
    half = confirm_vision_study(recipe, top_k=2, seeds=(1, 2), valid_images=12, shard=(0, 2), show_progress=False)
    assert half.trained == 2 and len(half.missing) == 2 and half.pick is None  # runs 0 and 2 only
    assert [s for _, s in half.missing] == [2, 2]
    assert "not stored yet" in (recipe.study_dir / "confirm.md").read_text()
    rest = confirm_vision_study(recipe, top_k=2, seeds=(1, 2), valid_images=12, shard=(1, 2), show_progress=False)
    assert rest.trained == 2 and not rest.missing and rest.pick is not None
    assert all(len(c["val_acc"]) == 2 for c in rest.candidates)
    study = optuna.load_study(study_name=recipe.study, storage=recipe.storage_url)
    images = sorted(v["valid_images"] for k, v in study.user_attrs.items() if k.startswith(PREFIX))
    assert images.count(12) == 4 and len(images) == 5  # the first protocol's run is kept apart


def test_confirm_cli_and_its_errors(searched, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe_path = tmp_path / "recipe.yaml"
    assert main(["search", str(recipe_path), "--set", "search.seed=3"]) == 0  # the study is complete: no training
    assert (f"retrain the best cells with more seeds: llmnas confirm {recipe_path} --set search.seed=3"
            in capsys.readouterr().out)
    assert main(["confirm", str(recipe_path), "--top-k", "1", "--seeds", "3", "--valid-images", "12"]) == 0
    assert "**pick**" in capsys.readouterr().out
    for argv, message in [
        (["--top-k", "0"], "--top-k 0: must be a positive integer"),
        (["--seeds", "1,x"], "--seeds '1,x': must be integers separated by commas"),
        (["--seeds", "1,1"], "a seed is repeated"),
        (["--shard", "2/2"], "--shard '2/2': must be K/N with 0 <= K < N"),
        (["--valid-images", "some"], "--valid-images 'some': must be a positive integer, or 'all'"),
        (["--set", "study=never_searched"], "never_searched/study.db: no such study database"),
    ]:
        assert main(["confirm", str(recipe_path), *argv]) == 2
        assert message in capsys.readouterr().err, argv
    with pytest.raises(RecipeError, match="llmnas confirm retrains cells of a vision study"):
        confirm_vision_study(load_recipe("quickstart"), show_progress=False)


def test_a_study_without_a_completed_trial_has_nothing_to_confirm(tiny_folder: Path, tmp_path: Path) -> None:
    recipe = load_recipe(tiny_recipe(tmp_path, tiny_folder))
    optuna.create_study(study_name=recipe.study, storage=f"sqlite:///{tmp_path / 'empty.db'}")
    recipe = load_recipe(tiny_recipe(tmp_path, tiny_folder), [f"search.storage=sqlite:///{tmp_path / 'empty.db'}"])
    with pytest.raises(StudyError, match="has no completed trial to confirm yet"):
        confirm_vision_study(recipe, show_progress=False)


def test_the_benchmark_confirms_its_search_by_the_committed_rule(tiny_folder: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "eval/nb201_train/run.py", "--stages", "search,confirm,report", "--recipe",
                           str(tiny_recipe(tmp_path, tiny_folder)), "--set", f"run_dir={tmp_path / 'runs'}",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    confirm = json.loads((out / "confirm.json").read_text())
    assert confirm["seeds"] == [1, 2, 3] and confirm["runs"] == 3 * len(confirm["candidates"])
    assert 1 <= len(confirm["candidates"]) <= 5 and confirm["protocol"]["data"]["valid_images"] is None
    pick = confirm["pick"]
    assert pick["mean"] == max(c["mean"] for c in confirm["candidates"])
    assert confirm["picked_table"]["cifar10"] == pick["ground_truth"]["cifar10_test200"]
    assert "Confirmed pick (confirm)" in (out / "results.md").read_text()
    # the second rule (results/confirm4x/RULE.md): seeds 1, 2, each run on 10,000 training images (here all the tiny
    # set has); its runs are another protocol's, stored beside the first rule's, and both are reported
    done = subprocess.run([sys.executable, "eval/nb201_train/run.py", "--stages", "confirm,report", "--confirm-rule",
                           "confirm4x", "--recipe", str(tiny_recipe(tmp_path, tiny_folder)),
                           "--set", f"run_dir={tmp_path / 'runs'}", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    wider = json.loads((out / "confirm4x.json").read_text())
    assert wider["seeds"] == [1, 2] and wider["protocol"]["train"]["train_images"] == 10_000
    assert wider["protocol"] != confirm["protocol"] and wider["trained_now"] == wider["runs"]
    assert [c["trial"] for c in wider["candidates"]] == [c["trial"] for c in confirm["candidates"]]
    report = (out / "results.md").read_text()
    assert "Confirmed pick (confirm)" in report and "Confirmed pick (confirm4x)" in report
    assert "`results/confirm4x/RULE.md`" in report and "on 10,000 training images each" in report
