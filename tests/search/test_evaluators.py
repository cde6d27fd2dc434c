"""Evaluators (search.evaluator): proxies instead of training, a trained supernet's weights, and the set-up
record that keeps a study to one evaluator."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState

from llmnas.cli import main
from llmnas.data import prepare_data
from llmnas.errors import RecipeError
from llmnas.models.decoder import Decoder
from llmnas.proxies import one_thread, score
from llmnas.recipe import load_recipe, recipe_from_dict
from llmnas.samplers.factory import SAMPLERS
from llmnas.search import load_study, run_search, trial_arch
from llmnas.search.engine import open_study, prepare_space
from llmnas.search.evaluators import proxy_batch
from tests.conftest import MICRO_SPACE


def make_recipe(tmp_path: Path, **search) -> dict:
    (tmp_path / "space.yaml").write_text(MICRO_SPACE)
    return {
        "study": "t",
        "space": str(tmp_path / "space.yaml"),
        "run_dir": str(tmp_path / "runs"),
        "data": {"source": "stdlib", "tokenizer": "byte", "block_size": 32, "max_bytes": 100_000,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_blocks": 8, "seed": 3},
        "search": {"sampler": "random", "n_trials": 4, "seed": 0, **search},
    }


def proxy(name: str, arch, batch=None, seed: int = 3) -> float:
    """The proxy as the search computes it (on one thread: the value does not depend on a thread count's
    order of summation)."""
    with one_thread():
        return score(name, arch, batch, seed=seed)


def proxy_search(**search) -> dict:
    return {"evaluator": "proxy", "proxy": "synflow", "objectives": ["neg_synflow"], **search}


def test_cli_proxy_search_scores_without_training(tmp_path, monkeypatch, capsys) -> None:
    """`llmnas search quickstart` with a synflow evaluator: 30 complete trials in well under a second each,
    valued by the proxy, nothing trained or kept."""
    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "cache"))
    args = ["search", "quickstart", "--set", "search.evaluator=proxy", "--set", "search.proxy=synflow",
            "--set", "search.objectives=[neg_synflow]", "--set", f"run_dir={tmp_path / 'runs'}", "--n-trials", "30"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "evaluator proxy synflow, no training" in out and "Top 5 by neg_synflow" in out
    study = load_study(tmp_path / "runs" / "quickstart")
    assert len(study.trials) == 30 and all(t.state == TrialState.COMPLETE for t in study.trials)
    seed = load_recipe("quickstart").train.seed
    for t in study.trials:
        a = t.user_attrs
        assert a["evaluator"] == "proxy" and a["proxy"] == "synflow"
        assert t.values == [-a["synflow"]] and "val_loss" not in a and "train_seconds" not in a
    for t in study.trials[:3]:  # the stored value is the proxy's, recomputed here
        assert t.user_attrs["synflow"] == proxy("synflow", trial_arch(t), seed=seed)
    # A ratio, not a wall-clock bound: a proxy costs less than 5 training steps of the same architecture
    # (a quickstart trial trains hundreds), both timed here on the same (possibly loaded) machine.
    timed = [t for t in study.trials if "reused_from" not in t.user_attrs]
    arch = trial_arch(timed[len(timed) // 2])
    model = Decoder(arch)
    x = torch.randint(0, arch.vocab_size, (16, arch.max_seq_len), generator=torch.Generator().manual_seed(0))
    with one_thread():
        start = time.perf_counter()
        for _ in range(5):
            model(x, targets=x).loss.backward()
        five_steps = time.perf_counter() - start
    seconds = [t.user_attrs["proxy_seconds"] for t in timed]
    assert statistics.median(seconds) < five_steps, (seconds, five_steps)
    assert study.user_attrs["setup"]["evaluator"] == {"kind": "proxy", "proxy": "synflow"}
    assert not (tmp_path / "runs" / "quickstart" / "trials").exists()  # no checkpoint folders


def test_grad_norm_proxy_reads_the_recipe_batch(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path, **proxy_search(proxy="grad_norm",
                                                                   objectives=["neg_grad_norm", "params"])))
    study = run_search(recipe, show_progress=False).study
    batch = proxy_batch(recipe, prepare_data(recipe.data))
    assert batch[0].shape == (4, 32)  # train.batch_size windows of the block size
    for t in study.trials:
        expected = proxy("grad_norm", trial_arch(t), batch)
        assert t.values == [-expected, float(t.user_attrs["params"])]


def test_proxy_objectives_beside_val_loss_with_training(tmp_path) -> None:
    raw = make_recipe(tmp_path, objectives=["val_loss", "neg_synflow", "neg_non_embedding_params"], n_trials=2)
    study = run_search(recipe_from_dict(raw), show_progress=False).study
    for t in study.trials:
        a, arch = t.user_attrs, trial_arch(t)
        assert t.state == TrialState.COMPLETE and a["evaluator"] == "scratch" and a["steps"] == 2
        assert t.values == [a["val_loss"], -proxy("synflow", arch), -float(a["non_embedding_params"])]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_works_with_a_proxy(tmp_path, sampler: str) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path, sampler=sampler, n_trials=5, **proxy_search()))
    study = run_search(recipe, show_progress=False).study
    assert len(study.trials) == 5 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(t.values == [-t.user_attrs["synflow"]] for t in study.trials)


def test_a_study_resumes_only_with_its_evaluator(tmp_path) -> None:
    run_search(recipe_from_dict(make_recipe(tmp_path, n_trials=2, **proxy_search())), show_progress=False)
    other = make_recipe(tmp_path, n_trials=3, **proxy_search(proxy="params", objectives=["neg_params"]))
    with pytest.raises(RecipeError, match="different objectives, evaluator"):
        run_search(recipe_from_dict(other), show_progress=False)
    # Two supernets with different weights are different evaluators too.
    raw = make_recipe(tmp_path)
    raw["study"] = "s"
    recipe = recipe_from_dict(raw)
    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    open_study(recipe, space, data, evaluator={"kind": "supernet", "supernet_id": "aaaaaaaaaaaa"})
    open_study(recipe, space, data, evaluator={"kind": "supernet", "supernet_id": "aaaaaaaaaaaa"})  # resumes
    with pytest.raises(RecipeError, match="different evaluator"):
        open_study(recipe, space, data, evaluator={"kind": "supernet", "supernet_id": "bbbbbbbbbbbb"})


def test_a_study_from_before_evaluators_resumes_training_from_scratch(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path))
    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    study = open_study(recipe, space, data)
    setup = study.user_attrs["setup"]
    assert setup.pop("evaluator") == {"kind": "scratch"}
    study.set_user_attr("setup", setup)  # as written before search.evaluator existed
    open_study(recipe, space, data)
    with pytest.raises(RecipeError, match="different objectives, evaluator"):
        open_study(recipe_from_dict(make_recipe(tmp_path, **proxy_search())), space, data,
                   evaluator={"kind": "proxy", "proxy": "synflow"})


def test_supernet_evaluator_scores_with_inherited_weights(tmp_path, monkeypatch, capsys) -> None:
    from llmnas.supernet import evaluate_subnet, load_supernet
    from llmnas.train import make_accelerator

    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    raw = make_recipe(tmp_path, evaluator="supernet", n_trials=4)
    raw["supernet"] = {"train": {"max_steps": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 2  # no supernet trained yet: one clear error
    err = capsys.readouterr().err
    assert "r.yaml: search.supernet (default):" in err and "llmnas supernet train" in err
    assert main(["supernet", "train", str(path)]) == 0
    assert main(["search", str(path)]) == 0
    study = load_study(tmp_path / "runs" / "t")
    recipe = recipe_from_dict(raw)
    checkpoint = load_supernet(tmp_path / "runs" / "t" / "supernet")
    data = prepare_data(recipe.data)
    assert study.user_attrs["setup"]["evaluator"] == {"kind": "supernet", "supernet_id": checkpoint.id}
    for t in study.trials:
        a = t.user_attrs
        assert t.state == TrialState.COMPLETE and "train_seconds" not in a
        # a count instead of a wall-clock bound: no training step, only the recipe's 8 validation windows
        assert "steps" not in a and a["windows"] == recipe.train.eval_blocks == 8
        assert a["evaluator"] == "supernet" and a["supernet_id"] == checkpoint.id
        assert a["supernet_path"] == str(checkpoint.path)
    first = study.trials[0]
    direct = evaluate_subnet(checkpoint.net, trial_arch(first), data, recipe.train, make_accelerator(recipe.train))
    assert first.values == [pytest.approx(direct.val_loss)]
    assert not (tmp_path / "runs" / "t" / "trials").exists()


def test_supernet_evaluator_fine_tunes_a_copy_of_the_inherited_weights(tmp_path, monkeypatch) -> None:
    from llmnas.supernet import evaluate_subnet, finetune_subnet, load_supernet
    from llmnas.train import make_accelerator

    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    raw = make_recipe(tmp_path, evaluator="supernet", n_trials=2, finetune_steps=3, finetune_lr=5e-4)
    raw["supernet"] = {"train": {"max_steps": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["supernet", "train", str(path)]) == 0
    checkpoint = load_supernet(tmp_path / "runs" / "t" / "supernet")
    before = {k: v.clone() for k, v in checkpoint.net.state_dict().items()}
    assert main(["search", str(path)]) == 0
    study = load_study(tmp_path / "runs" / "t")
    setup = study.user_attrs["setup"]["evaluator"]
    assert setup == {"kind": "supernet", "supernet_id": checkpoint.id, "finetune_steps": 3, "finetune_lr": 5e-4}
    recipe = recipe_from_dict(raw)
    data = prepare_data(recipe.data)
    for t in study.trials:
        a = t.user_attrs
        assert t.state == TrialState.COMPLETE and a["finetune_steps"] == 3 and a["finetune_lr"] == 5e-4
    first = study.trials[0]
    acc = make_accelerator(recipe.train)
    direct = finetune_subnet(checkpoint.net, trial_arch(first), data, recipe.train, acc, 3, 5e-4)
    assert direct.finetune_steps == 3
    assert first.values == [pytest.approx(direct.val_loss)]  # seeded: the same training, the same loss
    as_is = evaluate_subnet(checkpoint.net, trial_arch(first), data, recipe.train, acc, whole_split=True).val_loss
    assert direct.val_loss != pytest.approx(as_is)  # the three steps changed the weights that were scored
    after = checkpoint.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the supernet itself is untouched

def test_supernet_evaluator_scores_on_the_whole_split(tmp_path, monkeypatch, capsys) -> None:
    """search.whole_split: every trial is scored on the whole validation split, not train.eval_blocks windows,
    and the setting is part of the study's set-up."""
    from llmnas.supernet import evaluate_subnet, load_supernet
    from llmnas.train import make_accelerator

    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    raw = make_recipe(tmp_path, evaluator="supernet", n_trials=3, whole_split=True)
    raw["supernet"] = {"train": {"max_steps": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["supernet", "train", str(path)]) == 0
    assert main(["search", str(path)]) == 0
    assert "scored on the whole validation split" in capsys.readouterr().out
    study = load_study(tmp_path / "runs" / "t")
    recipe = recipe_from_dict(raw)
    checkpoint = load_supernet(tmp_path / "runs" / "t" / "supernet")
    data = prepare_data(recipe.data)
    acc = make_accelerator(recipe.train)
    assert study.user_attrs["setup"]["evaluator"] == {"kind": "supernet", "supernet_id": checkpoint.id,
                                                      "whole_split": True}
    for t in study.trials:
        whole = evaluate_subnet(checkpoint.net, trial_arch(t), data, recipe.train, acc, whole_split=True)
        windows = evaluate_subnet(checkpoint.net, trial_arch(t), data, recipe.train, acc)
        assert whole.windows > windows.windows == recipe.train.eval_blocks
        assert t.user_attrs["windows"] == whole.windows and t.values == [pytest.approx(whole.val_loss)]
        assert whole.val_loss != pytest.approx(windows.val_loss)
    # scored on the windows instead, the study is another evaluator's: not resumed
    assert main(["search", str(path), "--n-trials", "4", "--set", "search.whole_split=false"]) == 2
    assert "was started with a different evaluator" in capsys.readouterr().err


def test_supernet_evaluator_calibrates_the_inherited_loss(tmp_path, monkeypatch, capsys) -> None:
    """search.calibration: each trial's val_loss (and its bits) is the calibrated prediction, the supernet's own
    loss is kept as inherited_val_loss, and the calibration is part of the study's set-up."""
    from llmnas.supernet import evaluate_subnet, load_supernet
    from llmnas.train import make_accelerator

    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    calibration = {"intercept": 0.1, "inherited": 1.1, "per_layer": -0.05,
                   "offsets": {"pos": {"rope": 0.0, "learned": 0.02}}}
    raw = make_recipe(tmp_path, evaluator="supernet", n_trials=4, calibration=calibration)
    raw["supernet"] = {"train": {"max_steps": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["supernet", "train", str(path)]) == 0
    assert main(["search", str(path)]) == 0
    assert "val_loss calibrated (search.calibration)" in capsys.readouterr().out
    study = load_study(tmp_path / "runs" / "t")
    recipe = recipe_from_dict(raw)
    checkpoint = load_supernet(tmp_path / "runs" / "t" / "supernet")
    data = prepare_data(recipe.data)
    acc = make_accelerator(recipe.train)
    setup = study.user_attrs["setup"]["evaluator"]
    assert setup == {"kind": "supernet", "supernet_id": checkpoint.id, "calibration": calibration}
    for t in study.trials:
        a, arch = t.user_attrs, trial_arch(t)
        assert t.state == TrialState.COMPLETE and a["calibration"] == calibration
        direct = evaluate_subnet(checkpoint.net, arch, data, recipe.train, acc)
        assert a["inherited_val_loss"] == pytest.approx(direct.val_loss)
        offset = calibration["offsets"]["pos"][arch.pos]
        predicted = 0.1 + 1.1 * direct.val_loss - 0.05 * len(arch.blocks) + offset
        assert t.values == [pytest.approx(predicted)] and a["val_loss"] == pytest.approx(predicted)
        assert a["inherited_bits_per_byte"] == pytest.approx(direct.bits_per_byte)
        assert a["bits_per_byte"] / a["inherited_bits_per_byte"] == pytest.approx(predicted / direct.val_loss)
    # another calibration is another evaluator: the study is not resumed with it
    assert main(["search", str(path), "--n-trials", "5", "--set", "search.calibration.per_layer=0.0"]) == 2
    assert "was started with a different evaluator" in capsys.readouterr().err
    # a value of the space the calibration has no offset for: one error naming it, before any trial
    raw["study"] = "u"
    raw["search"]["calibration"] = {**calibration, "offsets": {"pos": {"rope": 0.0}}}
    raw["search"]["supernet"] = str(tmp_path / "runs" / "t" / "supernet")
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "r.yaml: search.calibration.offsets.pos: no offset for 'learned' (the space's values: rope, learned)" in err
    assert not (tmp_path / "runs" / "u" / "study.db").exists() or not load_study(tmp_path / "runs" / "u").trials


def test_supernet_calibrate_fits_a_from_scratch_study(tmp_path, monkeypatch, capsys) -> None:
    """`llmnas supernet calibrate RECIPE --from STUDY`: the from-scratch trials' losses fitted on the supernet's
    inherited ones; the printed block is a recipe's search.calibration, and a search runs with it."""
    from llmnas.search import trial_arch
    from llmnas.supernet import evaluate_subnet, load_supernet
    from llmnas.supernet.calibration import Calibration, fit
    from llmnas.train import make_accelerator

    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    scratch = make_recipe(tmp_path, n_trials=12)
    scratch["study"] = "scratch"
    scratch["train"]["max_steps"] = 20
    (tmp_path / "scratch.yaml").write_text(yaml.safe_dump(scratch))
    assert main(["search", str(tmp_path / "scratch.yaml")]) == 0
    raw = make_recipe(tmp_path, evaluator="supernet", n_trials=3)
    raw["supernet"] = {"train": {"max_steps": 20}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["supernet", "train", str(path)]) == 0
    capsys.readouterr()
    out = tmp_path / "calibration.json"
    assert main(["supernet", "calibrate", str(path), "--from", str(tmp_path / "runs" / "scratch"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # the fit, redone here from the study and the supernet
    study = load_study(tmp_path / "runs" / "scratch")
    done = {}
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            done.setdefault(t.user_attrs["arch_id"], t)
    recipe = recipe_from_dict(raw)
    net = load_supernet(tmp_path / "runs" / "t" / "supernet").net
    data, acc = prepare_data(recipe.data), make_accelerator(recipe.train)
    archs = [trial_arch(t) for t in done.values()]
    inherited = [evaluate_subnet(net, a, data, recipe.train, acc).val_loss for a in archs]
    expected = fit(archs, inherited, [t.user_attrs["val_loss"] for t in done.values()])
    written = json.loads(out.read_text())
    assert written["n"] == len(archs) >= 5
    got = Calibration.from_dict(written["calibration"])
    assert got.intercept == pytest.approx(expected.intercept) and got.inherited == pytest.approx(expected.inherited)
    assert got.per_layer == pytest.approx(expected.per_layer)
    assert got.offsets["pos"] == pytest.approx(expected.offsets["pos"])
    assert set(written["kendall_tau"]) == {"inherited", "calibrated (in-sample)", "calibrated (leave-one-out)"}
    assert f"against {len(archs)} from-scratch architectures" in printed and "Kendall tau" in printed
    # the printed block, pasted into the recipe, is read and searched with
    block = yaml.safe_load(printed[printed.index("search:"):printed.index("written:")])
    raw["search"]["calibration"] = block["search"]["calibration"]
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 0
    assert all("inherited_val_loss" in t.user_attrs for t in load_study(tmp_path / "runs" / "t").trials)
    # bad input: one error each
    capsys.readouterr()
    assert main(["supernet", "calibrate", str(path), "--from", str(tmp_path / "runs" / "t")]) == 2
    assert "scored by supernet, not trained from scratch" in capsys.readouterr().err
    assert main(["supernet", "calibrate", str(path), "--from", str(tmp_path / "runs" / "scratch"),
                 "--offsets", "window"]) == 2
    assert "--offsets: 'window' not allowed (allowed: pos, norm, d_model)" in capsys.readouterr().err
    assert main(["supernet", "calibrate", str(path), "--from", str(tmp_path / "runs" / "scratch"),
                 "--set", "data.block_size=16"]) == 2
    assert "measured on other data (data.block_size: 32, the recipe 16)" in capsys.readouterr().err


def test_evaluator_keys_are_checked_with_the_recipe(tmp_path) -> None:
    def error(**search) -> str:
        with pytest.raises(RecipeError) as e:
            recipe_from_dict(make_recipe(tmp_path, **search), "r.yaml")
        return str(e.value)

    assert "search.evaluator='annealed': not allowed (allowed: scratch, proxy, supernet)" in error(evaluator="annealed")
    assert "search.proxy: missing" in error(evaluator="proxy", objectives=["neg_synflow"])
    assert "search.proxy='snip': not allowed" in error(evaluator="proxy", proxy="snip")
    assert "the first objective must be neg_synflow" in error(evaluator="proxy", proxy="synflow")
    assert "need training" in error(**proxy_search(objectives=["neg_synflow", "val_loss"]))
    assert "only read with search.evaluator: proxy" in error(proxy="synflow")
    assert "only read with search.evaluator: supernet" in error(supernet=str(tmp_path))
    assert "search.supernet=" in error(evaluator="supernet", supernet=str(tmp_path / "nope"))
    assert "is a file" in error(evaluator="supernet", supernet=str(tmp_path / "space.yaml"))
    assert "the first objective must be val_loss or bits_per_byte" in error(objectives=["neg_synflow"])
    assert "only read with search.evaluator: supernet" in error(finetune_steps=10)
    assert "search.whole_split: only read with search.evaluator: supernet" in error(whole_split=True)
    assert "search.whole_split='yes': must be true or false" in error(evaluator="supernet", whole_split="yes")
    assert "search.finetune_steps=-1: must be a non-negative integer" in error(evaluator="supernet", finetune_steps=-1)
    assert "search.finetune_lr=-0.1: must be a positive number" in error(evaluator="supernet", finetune_lr=-0.1)
    calibration = {"intercept": 0.0, "inherited": 1.0}
    assert "search.calibration: only read with search.evaluator: supernet" in error(calibration=calibration)
    assert "r.yaml: search.calibration.inherited=0.0: must be positive" in error(
        evaluator="supernet", calibration={"intercept": 0.0, "inherited": 0.0})
    ok = recipe_from_dict(make_recipe(tmp_path, evaluator="supernet", supernet=str(tmp_path)))
    assert ok.search.supernet == str(tmp_path)
    assert recipe_from_dict(make_recipe(tmp_path, **proxy_search())).search.directions == ["minimize"]
