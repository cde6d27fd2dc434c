"""Training a cell network: it learns, keeps its budget, records throughput, stops on NaN, runs on 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from llmnas.errors import RecipeError
from llmnas.train import TrainingDiverged, TrainingPruned
from llmnas.vision.data import load_images, nb201_split
from llmnas.vision.network import param_count
from llmnas.vision.train import (
    VisionTrainConfig,
    build_network,
    evaluate_accuracy,
    stratified_subset,
    train_cell,
    train_network,
)
from tests.conftest import launch_two_processes

CELL = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
SCRIPT = Path(__file__).with_name("dist_vision_script.py")


def test_training_fits_the_images_and_records_throughput(tiny_folder: Path) -> None:
    data = load_images(tiny_folder)
    idx = torch.arange(len(data.train_y))
    cfg = VisionTrainConfig(C=4, N=1, batch_size=20, epochs=10, lr=0.1, augment=False, mixed_precision="no")
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    net = build_network(CELL, cfg, data)
    _, before = evaluate_accuracy(net, data.train_x, data.train_y, data, acc)
    model, result = train_network(net, data, idx, {"fit": idx, "test": (data.test_x, data.test_y)}, cfg, acc)
    assert result.steps == 10 * 3 and result.images == result.steps * 20 and result.train_images == 60
    assert result.loss["fit"] < before - 0.3  # it learned its training images
    assert set(result.accuracy) == {"fit", "test"} and 0 <= result.accuracy["test"] <= 100
    assert result.images_per_second > 0 and result.train_seconds > 0
    assert result.params == param_count(model)


def test_budgets_subsets_and_seeds(tiny_folder: Path) -> None:
    data = load_images(tiny_folder)
    tr, va = nb201_split(data)
    sub = stratified_subset(tr, data.train_y[tr], 20, seed=3)
    assert len(sub) == 20 and torch.bincount(data.train_y[sub]).tolist() == [2] * 10 and set(sub.tolist()) <= set(
        tr.tolist())
    cfg = VisionTrainConfig(C=4, N=1, batch_size=10, epochs=1.5, train_images=20, mixed_precision="no")
    acc = Accelerator(cpu=True)
    _, a = train_cell(CELL, data, tr, {"valid": va}, cfg, acc)
    _, b = train_cell(CELL, data, tr, {"valid": va}, cfg, acc)
    assert a.steps == 3 and a.train_images == 20
    assert a.loss == b.loss  # one seed: the same initialisation, order and augmentation
    _, c = train_cell(CELL, data, tr, {"valid": va}, cfg.replace(epochs=None, max_steps=2), acc)
    assert c.steps == 2


def test_epoch_reports_measure_without_changing_the_run_and_can_stop_it(tiny_folder: Path) -> None:
    data = load_images(tiny_folder)
    tr, va = nb201_split(data)
    cfg = VisionTrainConfig(C=4, N=1, batch_size=10, epochs=3, train_images=20, eval_every_epochs=1,
                            mixed_precision="no")
    acc = Accelerator(cpu=True)
    seen: list[tuple[int, float, float]] = []
    _, r = train_cell(CELL, data, tr, {"valid": va, "test": (data.test_x, data.test_y)}, cfg, acc,
                      lambda epoch, a, loss: seen.append((epoch, a, loss)) is not None)
    _, plain = train_cell(CELL, data, tr, {"valid": va, "test": (data.test_x, data.test_y)},
                          cfg.replace(eval_every_epochs=None), acc)
    assert [e for e, _, _ in seen] == [1, 2]  # every epoch but the last, which the final measurement covers
    assert r.history == [*seen, (3, r.accuracy["valid"], r.loss["valid"])]  # the first evaluation set's figures
    assert r.loss == plain.loss and r.accuracy == plain.accuracy  # measuring changed nothing of the training
    assert plain.history == [(3, plain.accuracy["valid"], plain.loss["valid"])]
    assert r.train_seconds > 0 and r.eval_seconds > 0
    alone = evaluate_accuracy(build_network(CELL, cfg, data), data.train_x[va], data.train_y[va], data, acc)
    assert seen[0][1:] != alone  # the epoch-1 figures are the trained network's, not a fresh one's
    with pytest.raises(TrainingPruned, match="pruned after epoch 2 \\(valid accuracy") as stopped:
        train_cell(CELL, data, tr, {"valid": va}, cfg, acc, lambda epoch, a, loss: epoch == 2)
    assert stopped.value.step == 2 and stopped.value.val_loss == seen[1][2]  # stopped where it was told to
    with pytest.raises(RecipeError, match="train.eval_every_epochs=0"):
        cfg.replace(eval_every_epochs=0)


def test_nan_loss_stops_the_run(tiny_folder: Path) -> None:
    data = load_images(tiny_folder)
    cfg = VisionTrainConfig(C=4, N=1, batch_size=20, max_steps=20, lr=1e30, momentum=0.0, nesterov=False,
                            mixed_precision="no")
    with pytest.raises(TrainingDiverged):
        train_cell(CELL, data, torch.arange(60), {}, cfg, Accelerator(cpu=True))


def test_bad_config_values_are_named() -> None:
    with pytest.raises(RecipeError, match="give a budget"):
        VisionTrainConfig()
    with pytest.raises(RecipeError, match="train.C=0"):
        VisionTrainConfig(C=0, epochs=1)
    with pytest.raises(RecipeError, match="train.epochs=-1"):
        VisionTrainConfig(epochs=-1)


def test_two_processes_under_accelerate_launch(tiny_folder: Path, tmp_path: Path) -> None:
    done = launch_two_processes("ddp", SCRIPT, str(tmp_path), str(tiny_folder))
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert ranks[0]["hash"] == ranks[1]["hash"]  # the replicas stayed equal
    assert ranks[0]["images"] == 3 * 5 * 2 and ranks[0]["steps"] == 3  # each process its own 5 images a step
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]  # evaluation gathered over both processes
    assert ranks[0]["images_per_second"] > 0
    # the epoch reports: measured over both processes alike; the main process's pruning decision stops both
    assert [r["pruned_at"] for r in ranks] == [2, 2] and [r["pruned_at_silent"] for r in ranks] == [2, 2]
    assert ranks[0]["reported"] == ranks[1]["reported"] and [e for e, _, _ in ranks[0]["reported"]] == [1, 2]
