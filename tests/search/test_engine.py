from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import torch
import yaml
from accelerate import Accelerator
from optuna.trial import TrialState

from llmnas.data import prepare_data
from llmnas.errors import RecipeError
from llmnas.recipe import recipe_from_dict
from llmnas.search import load_study, run_search, select_trial, trial_arch
from llmnas.search.engine import Objective, prepare_space
from tests.conftest import REPO, accelerate_launcher, shared_data

SPACE = """
name: micro
vocab_size: 65
max_seq_len: 32
d_model: [32, 48]
n_layers: [1, 2]
pos: [rope, learned]
layer:
  n_heads: [2, 4]
  attention: [full, sliding]
  window: [8]
  activation: [gelu, swiglu]
  ffn_mult: [2]
"""
TWO_ARCHS = """
name: two
vocab_size: 65
max_seq_len: 32
d_model: [32]
n_layers: [1]
layer:
  n_heads: [2, 4]
"""


def make_recipe(tmp_path: Path, space: str = SPACE, **search) -> dict:
    (tmp_path / "space.yaml").write_text(textwrap.dedent(space))
    return {
        "study": "t",
        "space": str(tmp_path / "space.yaml"),
        "run_dir": str(tmp_path / "runs"),
        "data": {"source": str(shared_data("text/tinyshakespeare.txt")), "tokenizer": "char", "block_size": 32,
                 "max_bytes": 60_000, "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_interval": 2, "eval_blocks": 8},
        "search": {"sampler": "random", "n_trials": 3, "seed": 0, **search},
    }


def finished(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if t.state.is_finished()]


def test_search_records_trials_resumes_and_summarises(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path))
    summary = run_search(recipe, show_progress=False)
    study = summary.study
    assert len(finished(study)) == 3 and summary.new_trials == 3
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        a = t.user_attrs
        assert t.values[0] == a["val_loss"] and a["bits_per_char"] > 0 and a["bits_per_byte"] > 0
        assert a["tokens"] == 4 * 4 * 32 and a["steps"] == 4 and a["train_seconds"] > 0
        arch = trial_arch(t)
        assert arch.id == a["arch_id"] and arch.param_counts().total == a["params"]
        assert [s for s, _ in a["history"]] == [2, 4] and set(t.intermediate_values) == {2}
    setup = study.user_attrs
    assert setup["data"]["corpus_sha256"] and setup["versions"]["optuna"] == optuna.__version__
    assert (summary.study_dir / "summary.md").read_text().count("| ") > 10
    # Re-running resumes: nothing to do at the same n_trials, two more when asked for five.
    assert run_search(recipe, show_progress=False).new_trials == 0
    again = run_search(recipe, n_trials=5, show_progress=False)
    assert again.new_trials == 2 and len(finished(again.study)) == 5
    # The study loads from the run folder, as `llmnas export runs/<study> --trial best` does.
    best = select_trial(load_study(summary.study_dir), "best")
    assert best.values[0] == min(t.values[0] for t in finished(again.study))


def test_changed_setup_is_not_resumed(tmp_path) -> None:
    run_search(recipe_from_dict(make_recipe(tmp_path)), n_trials=1, show_progress=False)
    changed = make_recipe(tmp_path)
    changed["train"]["max_steps"] = 8
    with pytest.raises(RecipeError, match="different train"):
        run_search(recipe_from_dict(changed), n_trials=2, show_progress=False)


def test_repeated_architecture_is_reused_not_retrained(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path, TWO_ARCHS, n_trials=6))
    study = run_search(recipe, show_progress=False).study
    trained = [t for t in study.trials if "reused_from" not in t.user_attrs]
    reused = [t for t in study.trials if "reused_from" in t.user_attrs]
    assert len(trained) == len({t.user_attrs["arch_id"] for t in study.trials}) <= 2 and reused
    for t in reused:
        origin = study.trials[t.user_attrs["reused_from"]]
        assert origin.user_attrs["arch_id"] == t.user_attrs["arch_id"] and t.values == origin.values
        assert t.user_attrs["train_seconds"] == origin.user_attrs["train_seconds"]


def test_constraints_reject_before_training(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path, n_trials=8, constraints={"max_params": 20_000}))
    study = run_search(recipe, show_progress=False).study
    rejected = [t for t in study.trials if "rejected" in t.user_attrs]
    assert rejected and all(t.state == TrialState.PRUNED and "val_loss" not in t.user_attrs for t in rejected)
    assert all("max_params 20000" in t.user_attrs["rejected"][0] for t in rejected)
    assert all(t.user_attrs["params"] <= 20_000 for t in study.trials if t.state == TrialState.COMPLETE)


def test_diverged_trials_fail_with_reason_and_the_study_goes_on(tmp_path) -> None:
    raw = make_recipe(tmp_path, n_trials=3)
    raw["train"].update(lr=1e6, min_lr=0.0, grad_clip=None, max_steps=12)
    study = run_search(recipe_from_dict(raw), show_progress=False).study
    assert len(study.trials) == 3
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("diverged" in t.user_attrs["fail_reason"] for t in failed)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_pruner_stops_a_trial_at_its_first_report(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path))
    space_data = prepare_data(recipe.data)
    space = prepare_space(recipe, space_data)
    study = optuna.create_study(pruner=AlwaysPrune(), sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(Objective(recipe, space, space_data, Accelerator(cpu=True)), n_trials=2)
    assert all(t.state == TrialState.PRUNED and t.user_attrs["pruned_at_step"] == 2 for t in study.trials)
    assert all(t.intermediate_values.keys() == {2} for t in study.trials)


def test_multi_objective_study_has_a_pareto_front(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path, sampler="nsga2", sampler_options={"population_size": 4},
                                          n_trials=5, objectives=["val_loss", "params"]))
    summary = run_search(recipe, show_progress=False)
    assert {p.name for p in summary.plots} == {"pareto.png", "pareto.html"}
    assert all(p.stat().st_size > 1000 for p in summary.plots)
    for t in summary.study.trials:
        assert t.values == [t.user_attrs["val_loss"], float(t.user_attrs["params"])]
    assert "Pareto front" in summary.summary_path.read_text()


def test_optuna_dashboard_reads_the_study(tmp_path) -> None:
    from optuna_dashboard import wsgi

    summary = run_search(recipe_from_dict(make_recipe(tmp_path, n_trials=2)), show_progress=False)
    app = wsgi(summary.storage_url)

    def get(path: str) -> dict:
        environ: dict = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        status: list[str] = []
        body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[-2000:])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["t"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 2
    attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
    assert {"arch", "arch_id", "params", "val_loss", "bits_per_byte"} <= attrs


def test_two_workers_share_the_study(tmp_path) -> None:
    raw = make_recipe(tmp_path, sampler="evolution", n_trials=10, workers=2)
    raw["train"]["max_steps"] = 60  # long enough that the second process has started before the end
    threads = torch.get_num_threads()
    study = run_search(recipe_from_dict(raw), show_progress=False).study
    assert len(study.trials) == 10 and all(t.state == TrialState.COMPLETE for t in study.trials)  # exactly
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert torch.get_num_threads() == threads  # the caller's thread count is given back


def _cli(*args: str, env: dict | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable, "-m"]), "llmnas", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})},
                          timeout=600)


def test_cli_search_train_export(tmp_path) -> None:
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(make_recipe(tmp_path, n_trials=2)))
    done = _cli("search", str(recipe_path), "--set", "train.max_steps=3")
    assert done.returncode == 0, done.stderr
    assert "trial    1:" in done.stdout and "Top 5 by val_loss" in done.stdout
    # The commands it prints to export the best work as printed: straight away (the best trials' weights
    # are kept), and, without kept weights, after retraining with the same overrides.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def follow(prefix: str, stdout: str) -> None:
        line = next(x for x in stdout.splitlines() if x.startswith(prefix))
        commands = line.split(": ", 1)[1]
        followed = subprocess.run(commands, shell=True, capture_output=True, text=True, cwd=REPO, env=env,
                                  timeout=600)
        assert followed.returncode == 0, followed.stderr[-3000:]

    follow("export the best", done.stdout)
    assert (tmp_path / "runs" / "t" / "hf" / "config.json").is_file()
    done = _cli("search", str(recipe_path), "--set", "train.max_steps=3", "--set", "study=u",
                "--set", "search.keep_checkpoints=0")
    assert done.returncode == 0 and "--set study=u" in done.stdout, done.stderr
    follow("retrain the best", done.stdout)  # llmnas train ... --trial best && llmnas export ...
    assert (tmp_path / "runs" / "u" / "hf" / "config.json").is_file()
    (result_path,) = (tmp_path / "runs" / "u" / "retrain").glob("*/result.json")
    result = json.loads(result_path.read_text())
    assert result["steps"] == 3 and result["val_loss"] > 0  # the retrain budget with the same overrides
    bad = _cli("search", str(recipe_path), "--set", "search.sampler=annealing")
    assert bad.returncode == 2 and "annealing" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("mode", ["ddp", "deepspeed"])
def test_search_under_accelerate_launch_with_two_processes(tmp_path, mode) -> None:
    """Data-parallel trials on two CPU processes: the main process drives the study, both train."""
    if mode == "deepspeed" and importlib.util.find_spec("deepspeed") is None and os.environ.get("CI") != "true":
        pytest.skip("deepspeed is not installed (pip install -e '.[deepspeed]'); CI installs it")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(make_recipe(tmp_path, n_trials=2)))
    launcher, env = accelerate_launcher(mode)
    done = _cli("search", str(recipe_path), "--quiet", env=env, launcher=[*launcher, "-m"])
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(tmp_path / "runs" / "t")
    assert len(study.trials) == 2
    # Two processes each saw batch_size x block tokens per step.
    assert all(t.user_attrs["tokens"] == 2 * 4 * 4 * 32 for t in study.trials if t.state == TrialState.COMPLETE)


def test_constraints_can_go_to_the_sampler(tmp_path) -> None:
    recipe = recipe_from_dict(make_recipe(tmp_path, sampler="tpe", n_trials=4, constraint_mode="sampler",
                                          constraints={"max_params": 20_000}))
    study = run_search(recipe, show_progress=False).study
    assert all(t.state == TrialState.COMPLETE for t in study.trials)  # trained whatever their size
    for t in study.trials:  # what the samplers read
        assert t.constraints == {"max_params": float(t.user_attrs["params"] - 20_000)}
    with pytest.raises(RecipeError, match="constraint_mode: 'sampler' needs a sampler that reads constraints"):
        run_search(recipe_from_dict(make_recipe(tmp_path, sampler="random", constraint_mode="sampler")),
                   show_progress=False)


def test_the_best_trials_keep_their_weights(tmp_path) -> None:
    study = run_search(recipe_from_dict(make_recipe(tmp_path, n_trials=5, keep_checkpoints=2)),
                       show_progress=False).study
    trained = sorted((t.values[0], t.number) for t in study.trials
                     if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs)
    kept = {int(p.name) for p in (tmp_path / "runs" / "t" / "trials").iterdir()}
    assert kept == {n for _, n in trained[:2]} and len(trained) > 2  # the others were removed
    for n in kept:  # loadable checkpoints of the trials' own architectures
        from llmnas.export.checkpoint import load_checkpoint

        arch, state_dict, _ = load_checkpoint(tmp_path / "runs" / "t" / "trials" / str(n))
        assert arch.id == study.trials[n].user_attrs["arch_id"] and state_dict
    small = make_recipe(tmp_path, n_trials=2, keep_checkpoints=2, checkpoint_max_mb=0.001)
    small["study"] = "small"
    run_search(recipe_from_dict(small), show_progress=False)
    assert not (tmp_path / "runs" / "small" / "trials").exists()  # too large to keep


def test_retraining_ignores_the_search_holdout(tmp_path) -> None:
    """The search selects on data.holdout; `llmnas train` retrains on the whole training split and scores on
    the corpus's own validation split."""
    from llmnas.cli import main
    from llmnas.data import DataConfig

    raw = make_recipe(tmp_path)
    raw["data"]["holdout"] = 0.1
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    recipe = recipe_from_dict(raw)
    arch = prepare_space(recipe, prepare_data(recipe.data)).sample(0)
    arch.save(tmp_path / "arch.json")
    assert main(["train", str(tmp_path / "r.yaml"), "--arch", str(tmp_path / "arch.json"), "--out",
                 str(tmp_path / "ckpt")]) == 0
    split = json.loads((tmp_path / "ckpt" / "result.json").read_text())["data"]
    whole = prepare_data(DataConfig.from_dict({**raw["data"], "holdout": None}))
    carved = prepare_data(recipe.data)
    assert split["n_train_tokens"] == whole.meta.n_train_tokens > carved.meta.n_train_tokens
    assert split["n_val_tokens"] == whole.meta.n_val_tokens != carved.meta.n_val_tokens
    assert split["search_holdout"] == 0.1
