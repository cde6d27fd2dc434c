"""The rule that picks the samplers' defaults from the validation-scored sweep (eval/nasbench201/run.py)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO

DATASETS = ["cifar10", "cifar100", "imagenet16-120"]


def load_run_module():
    spec = importlib.util.spec_from_file_location("nb201_eval_run", REPO / "eval" / "nasbench201" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def payload(module, means: dict[str, float]) -> dict:
    labels = [label.split("=")[0] for label in module.ABLATIONS]
    return {"config": {"datasets": DATASETS},
            "summary": {f"{v}/{d}": {"mean": means.get(v, 50.0)} for v in labels for d in DATASETS}}


def chosen(markdown: str) -> dict[str, str]:
    rows = [line.split(" | ") for line in markdown.splitlines() if line.endswith("**yes** |")]
    return {row[0].strip("| "): row[1].split(" ")[0] for row in rows}


def test_a_variant_must_beat_the_defaults_at_two_decimals() -> None:
    run = load_run_module()
    # thompson: ts-noise1 better by 0.004, equal at two decimals -> a tie, the defaults stay
    # evolution: evo-P50-S25 better by 0.01 -> chosen; reinforce: everything worse -> defaults
    md = run.choose(payload(run, {"thompson": 61.521, "ts-noise1": 61.524, "evolution": 61.0, "evo-P50-S25": 61.01,
                                  "reinforce": 60.9}))
    assert chosen(md) == {"evolution": "evo-P50-S25", "reinforce": "reinforce", "thompson": "thompson"}
    assert run.RULE in md and "thompson n_startup_trials=10" in md  # the sweep's centre is stated


def test_the_committed_choice_follows_from_the_committed_sweep_and_sets_the_defaults() -> None:
    from llmnas.samplers import ThompsonSampler

    run = load_run_module()
    results = REPO / "eval" / "nasbench201" / "results" / "ablations"
    md = run.choose(json.loads((results / "nb201_val.json").read_text()))
    assert md == (results / "choice.md").read_text()
    picks = chosen(md)
    assert picks["evolution"] == "evolution" and picks["reinforce"] == "reinforce"
    # the chosen Thompson variant's setting is the sampler's default now
    options = run.ABLATIONS[run._label(picks["thompson"])]
    assert all(getattr(ThompsonSampler(), k) == v for k, v in options.items())
