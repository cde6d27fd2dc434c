"""Hardware objectives and caps in real searches: every sampler, the proxy, scratch and supernet evaluators, a
SQLite study on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import yaml
from accelerate import Accelerator
from optuna.study import StudyDirection
from optuna.trial import TrialState

from llmnas.cli import main
from llmnas.data import prepare_data
from llmnas.errors import RecipeError
from llmnas.hardware import LatencyPredictor
from llmnas.recipe import recipe_from_dict
from llmnas.search import load_study, run_search, trial_arch
from llmnas.search.engine import Objective, open_study, prepare_space
from tests.conftest import MICRO_SPACE
from tests.hardware.conftest import QUICK


def make_recipe(tmp_path: Path, hardware: dict | None = None, **search) -> dict:
    (tmp_path / "space.yaml").write_text(MICRO_SPACE)
    raw = {
        "study": "t",
        "space": str(tmp_path / "space.yaml"),
        "run_dir": str(tmp_path / "runs"),
        "data": {"source": "stdlib", "tokenizer": "byte", "block_size": 32, "max_bytes": 100_000,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_blocks": 8, "seed": 3},
        "search": {"sampler": "random", "n_trials": 4, "seed": 0, **search},
    }
    if hardware is not None:
        raw["hardware"] = hardware
    return raw


def predicted(predictor: LatencyPredictor, **caps) -> dict:
    return {"mode": "predicted", "predictor": predictor.path, **caps}


PROXY_HW = {"evaluator": "proxy", "proxy": "params", "objectives": ["neg_params", "decode_tokens_per_s", "prefill_ms"]}


def sqlite_study(tmp_path: Path, raw: dict) -> tuple[optuna.Study, Objective]:
    """The recipe's study in a SQLite file with its sampler, and the engine's objective (no end-of-search report)."""
    recipe = recipe_from_dict(raw)
    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    return open_study(recipe, space, data), Objective(recipe, space, data, Accelerator(cpu=True))


@pytest.mark.parametrize("sampler", ["evolution", "reinforce", "thompson", "nsga2"])
def test_predicted_objectives_reach_every_sampler(sampler: str, tmp_path: Path,
                                                  micro_predictor: LatencyPredictor) -> None:
    study, objective = sqlite_study(tmp_path, make_recipe(tmp_path, predicted(micro_predictor), sampler=sampler,
                                                          **PROXY_HW))
    study.optimize(objective, n_trials=4)
    reloaded = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}")
    assert reloaded.directions == [StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    done = [t for t in reloaded.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:
        p = micro_predictor.predict(trial_arch(t))
        assert t.values[1:] == [pytest.approx(p["decode_tokens_per_s"]), pytest.approx(p["prefill_ms"])]
        assert t.user_attrs["hw_mode"] == "predicted" and t.user_attrs["peak_memory_mb"] == p["peak_memory_mb"]
    setup = reloaded.user_attrs["setup"]["hardware"]
    assert setup["mode"] == "predicted" and len(setup["predictor_sha"]) == 12


def test_measured_objective_beside_val_loss(tmp_path: Path) -> None:
    hardware = {"mode": "measured", "settings": dataclasses.asdict(QUICK) | {"train_repeats": 0}}
    raw = make_recipe(tmp_path, hardware, n_trials=2, objectives=["val_loss", "prefill_ms", "decode_tokens_per_s"])
    study = run_search(recipe_from_dict(raw), show_progress=False).study
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and t.user_attrs["hw_mode"] == "measured"
        assert t.values == [t.user_attrs["val_loss"], t.user_attrs["prefill_ms"], t.user_attrs["decode_tokens_per_s"]]
        assert t.values[1] > 0 and t.values[2] > 0 and "steps" in t.user_attrs  # trained, and measured
    assert study.user_attrs["setup"]["hardware"]["settings"]["prompt_len"] == QUICK.prompt_len


def test_latency_cap_rejects_slow_architectures(tmp_path: Path, micro_predictor: LatencyPredictor,
                                                micro_space_file) -> None:
    from llmnas.space import load_space

    space = load_space(micro_space_file)
    latencies = sorted(micro_predictor.predict(space.sample(s))["prefill_ms"] for s in range(40))
    cap = latencies[len(latencies) // 2]
    study, objective = sqlite_study(tmp_path, make_recipe(tmp_path, predicted(micro_predictor, max_prefill_ms=cap),
                                                          **PROXY_HW))
    study.optimize(objective, n_trials=8)
    rejected = [t for t in study.trials if "rejected" in t.user_attrs]
    kept = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert rejected and kept
    assert all(t.state == TrialState.PRUNED and "max_prefill_ms" in t.user_attrs["rejected"][0] for t in rejected)
    assert all(t.user_attrs["prefill_ms"] > cap for t in rejected)
    assert all(t.user_attrs["prefill_ms"] <= cap for t in kept)


def test_latency_cap_as_sampler_constraint(tmp_path: Path, micro_predictor: LatencyPredictor) -> None:
    raw = make_recipe(tmp_path, predicted(micro_predictor, min_decode_tokens_per_s=1e-3, max_prefill_ms=1e-4),
                      constraint_mode="sampler", sampler="nsga2", **PROXY_HW)
    study, objective = sqlite_study(tmp_path, raw)
    study.optimize(objective, n_trials=3)
    for t in study.trials:  # trained (scored) anyway; the sampler reads the constraints
        assert t.state == TrialState.COMPLETE
        c = {k.split(":")[-1]: v for k, v in t.system_attrs.items() if k.startswith("constraints")}
        assert c["min_decode_tokens_per_s"] < 0 < c["max_prefill_ms"]  # met; missed


def test_impossible_cap_is_one_error_before_any_trial(tmp_path: Path, micro_predictor: LatencyPredictor) -> None:
    raw = make_recipe(tmp_path, predicted(micro_predictor, max_prefill_ms=1e-6), **PROXY_HW)
    with pytest.raises(RecipeError, match=r"hardware.max_prefill_ms=1e-06: no architecture can meet it \(prefill_ms"):
        run_search(recipe_from_dict(raw), show_progress=False)
    assert not (tmp_path / "runs").exists()
    raw = make_recipe(tmp_path, {"settings": dataclasses.asdict(QUICK), "min_decode_tokens_per_s": 1e9}, **PROXY_HW)
    with pytest.raises(RecipeError, match="min_decode_tokens_per_s=1e.09: no architecture can meet it .*fewest FLOPs"):
        run_search(recipe_from_dict(raw), show_progress=False)
    assert not (tmp_path / "runs").exists()


def test_supernet_evaluator_with_a_predicted_objective(tmp_path: Path, monkeypatch,
                                                       micro_predictor: LatencyPredictor) -> None:
    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    raw = make_recipe(tmp_path, predicted(micro_predictor), evaluator="supernet", n_trials=3,
                      objectives=["val_loss", "decode_tokens_per_s"], sampler="evolution")
    raw["supernet"] = {"train": {"max_steps": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["supernet", "train", str(path)]) == 0
    assert main(["search", str(path)]) == 0
    study = load_study(tmp_path / "runs" / "t")
    for t in study.trials:
        assert t.user_attrs["evaluator"] == "supernet" and "steps" not in t.user_attrs
        assert t.values == [t.user_attrs["val_loss"],
                            pytest.approx(micro_predictor.predict(trial_arch(t))["decode_tokens_per_s"])]


def test_hardware_section_is_checked_with_the_recipe(tmp_path: Path, micro_predictor: LatencyPredictor) -> None:
    def error(hardware: dict, **search) -> str:
        with pytest.raises(RecipeError) as e:
            recipe_from_dict(make_recipe(tmp_path, hardware, **search), "r.yaml")
        return str(e.value)

    assert "r.yaml: hardware.mode='guessed': not allowed (allowed: measured, predicted)" in error({"mode": "guessed"})
    assert "hardware.predictor: missing (required with hardware.mode: predicted" in error({"mode": "predicted"})
    assert "hardware.predictor='nope.json': no such file" in error({"mode": "predicted", "predictor": "nope.json"})
    assert "hardware.device 'tpu': unknown device" in error({"device": "tpu"})
    assert "hardware.settings: only read with hardware.mode: measured" in error(
        predicted(micro_predictor) | {"settings": {"repeats": 3}})
    assert "hardware.settings: hardware setting repeats=0" in error({"settings": {"repeats": 0}})
    assert "hardware.max_prefill_ms=-1.0: must be a positive number" in error({"max_prefill_ms": -1})
    assert "hardware.speed: unknown key" in error({"speed": 1})
    assert "hardware.max_peak_memory_mb: needs the memory measurement" in error(
        {"max_peak_memory_mb": 5, "settings": {"memory": False}})
    plain = recipe_from_dict(make_recipe(tmp_path, objectives=["val_loss", "peak_memory_mb"]))
    assert plain.hardware is not None and plain.hardware.mode == "measured"  # a hardware objective: measured
    assert recipe_from_dict(make_recipe(tmp_path)).hardware is None
