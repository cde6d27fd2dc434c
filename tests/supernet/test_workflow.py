"""The supernet workflow end to end, as the README gives it: train the supernet, search with inherited
weights (single- and multi-objective), retrain the winner from scratch, export either set of weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState

from llmnas.cli import main
from llmnas.search import load_study, select_trial, trial_arch
from llmnas.supernet import load_supernet
from tests.conftest import MICRO_SPACE


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    (root / "space.yaml").write_text(MICRO_SPACE)
    recipe = {
        "study": "w",
        "space": str(root / "space.yaml"),
        "run_dir": str(root / "runs"),
        "data": {"source": "stdlib", "tokenizer": "byte", "block_size": 32, "max_bytes": 100_000,
                 "cache_dir": str(root / "cache"), "holdout": 0.05},
        "train": {"max_steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_blocks": 8, "seed": 3},
        "supernet": {"random_subnets": 1, "pool_size": 50, "train": {"max_steps": 4}},
        "search": {"evaluator": "supernet", "sampler": "evolution", "n_trials": 12, "seed": 0,
                   "keep_checkpoints": 0},
    }
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["supernet", "train", str(path)]) == 0
    assert main(["search", str(path), "--quiet"]) == 0
    return root, path


def logits_of(model_dir: Path, idx: torch.Tensor, remote: bool) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=remote).eval()
    with torch.no_grad():
        return model(idx).logits


def test_search_scores_every_trial_with_the_supernet(workflow) -> None:
    root, _ = workflow
    study = load_study(root / "runs" / "w")
    ckpt = load_supernet(root / "runs" / "w" / "supernet")
    assert len(study.trials) == 12 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["supernet_id"] for t in study.trials} == {ckpt.id}


def test_export_inherited_weights_equal_the_supernet_slice(workflow, capsys) -> None:
    root, _ = workflow
    run, out = root / "runs" / "w", root / "inherited"
    assert main(["export", str(run), "--trial", "best", "--supernet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weights: inherited from supernet" in printed
    arch = trial_arch(select_trial(load_study(run), "best"))
    ckpt = load_supernet(run / "supernet")
    idx = torch.randint(0, arch.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ckpt.net(idx, arch).logits
    remote = "trust_remote_code=True" in printed
    assert torch.allclose(logits_of(out, idx, remote), expected, atol=1e-4)
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()


def test_retrain_then_export_the_retrained_weights(workflow, capsys) -> None:
    root, path = workflow
    run = root / "runs" / "w"
    assert main(["train", str(path), "--trial", "best"]) == 0
    arch = trial_arch(select_trial(load_study(run), "best"))
    result = json.loads((run / "retrain" / arch.id / "result.json").read_text())
    assert result["arch_id"] == arch.id and result["steps"] == 3
    capsys.readouterr()
    out = root / "retrained"
    assert main(["export", str(run), "--trial", "best", "--out", str(out)]) == 0
    assert f"weights: {run / 'retrain' / arch.id}" in capsys.readouterr().out


def test_multi_objective_search_on_the_supernet(workflow) -> None:
    root, path = workflow
    assert main(["search", str(path), "--quiet", "--set", "study=w2", "--set", "search.sampler=nsga2",
                 "--set", "search.objectives=[val_loss,params]", "--set",
                 f"search.supernet={root / 'runs' / 'w' / 'supernet'}"]) == 0
    study = load_study(root / "runs" / "w2")
    assert len(study.directions) == 2
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)


def test_export_refuses_an_architecture_the_supernet_does_not_hold(workflow, tmp_path, capsys) -> None:
    from llmnas.space import load_space

    root, _ = workflow
    other = load_space("tiny").sample(0)  # another space: width and vocabulary the supernet does not have
    other.save(tmp_path / "a.json")
    code = main(["export", str(tmp_path / "a.json"), "--supernet", str(root / "runs" / "w" / "supernet"),
                 "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert code == 2 and ("not in the space" in err or "vocab_size" in err) and "Traceback" not in err
    assert not (tmp_path / "hf").exists()
    assert main(["export", str(tmp_path / "a.json"), "--supernet", "--out", str(tmp_path / "hf")]) == 2
    assert "--supernet without a folder needs --trial" in capsys.readouterr().err
