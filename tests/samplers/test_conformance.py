"""The conformance suite every llmnas sampler passes (add a new sampler to ``SAMPLERS`` below).

Real Optuna studies: in-memory and SQLite storages, ``optimize`` and ask/tell, resume with a new sampler
object, two worker processes on one SQLite file, failed and pruned trials, one and two objectives, with
and without a search space (NAS-Bench-201 cells and the shipped ``tiny`` transformer space).
"""

from __future__ import annotations

import multiprocessing as mp
import warnings

import numpy as np
import optuna
import pytest

from llmnas.samplers import build_sampler
from llmnas.space import load_space
from llmnas.space.nb201 import OPS, NB201Space

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS = {
    "evolution": {"population_size": 6, "sample_size": 3},
    "reinforce": {},
    "reinforce-lstm": {"controller": "lstm", "hidden_size": 8},
    "thompson": {"n_startup_trials": 4},
}
NAMES = list(SAMPLERS)
SPACE = NB201Space()
OP_SCORE = {"none": 0.0, "skip_connect": 1.0, "nor_conv_1x1": 2.0, "nor_conv_3x3": 3.0, "avg_pool_3x3": 0.5}


def make(name: str, seed: int | None = 0, space=SPACE, directions=("maximize",), **extra):
    base = name.split("-")[0]
    return build_sampler(base, space=space, directions=list(directions), seed=seed,
                         options={**SAMPLERS[name], **extra})


def cell_score(params: dict) -> float:
    """A smooth, additive-plus-interaction toy objective over NAS-Bench-201 cells (larger is better)."""
    ops = [params[n] for n in SPACE.choices()]
    return sum(OP_SCORE[o] for o in ops) + (2.0 if ops[0] == ops[5] == "nor_conv_3x3" else 0.0)


def objective(trial: optuna.Trial) -> float:
    return cell_score(SPACE.encode(SPACE.suggest(trial)))


def params_seq(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


@pytest.mark.parametrize("name", NAMES)
def test_optimize_in_memory_proposes_new_cells_and_improves(name: str) -> None:
    study = optuna.create_study(direction="maximize", sampler=make(name))
    study.optimize(objective, n_trials=40)
    keys = [SPACE.key(t.params) for t in study.trials]
    assert len(set(keys)) == len(keys), "an already-asked cell was proposed again"
    values = [t.value for t in study.trials]
    assert max(values) > np.mean(values[:6]) + 3.0  # far above what the random start found
    assert np.mean(values[-10:]) > np.mean(values[:6])


@pytest.mark.parametrize("name", NAMES)
def test_minimize_is_treated_as_minimize(name: str) -> None:
    study = optuna.create_study(direction="minimize", sampler=make(name, directions=("minimize",)))
    study.optimize(lambda t: -objective(t), n_trials=40)
    values = [t.value for t in study.trials]
    assert np.mean(values[-10:]) < np.mean(values[:6])


@pytest.mark.parametrize("name", NAMES)
def test_fixed_seed_gives_identical_sequence(name: str) -> None:
    runs = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize", sampler=make(name, seed=7))
        study.optimize(objective, n_trials=15)
        runs.append(params_seq(study))
    assert runs[0] == runs[1]
    other = optuna.create_study(direction="maximize", sampler=make(name, seed=8))
    other.optimize(objective, n_trials=15)
    assert params_seq(other) != runs[0]


@pytest.mark.parametrize("name", NAMES)
def test_ask_tell_with_failed_and_pruned_trials(name: str) -> None:
    study = optuna.create_study(direction="maximize", sampler=make(name))
    for i in range(24):
        trial = study.ask()
        params = SPACE.encode(SPACE.suggest(trial))
        if i % 5 == 3:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif i % 5 == 4:
            trial.report(1.0, step=0)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, cell_score(params))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 5 and states.count(optuna.trial.TrialState.PRUNED) == 4
    keys = [SPACE.key(t.params) for t in study.trials]
    assert len(set(keys)) == len(keys), "failed or pruned cells must not be proposed again"


@pytest.mark.parametrize("name", NAMES)
def test_objective_that_raises_is_recorded_and_the_study_goes_on(name: str) -> None:
    def flaky(trial: optuna.Trial) -> float:
        value = objective(trial)
        if trial.number % 4 == 1:
            raise ValueError("diverged")
        if trial.number % 4 == 2:
            raise optuna.TrialPruned()
        return value

    study = optuna.create_study(direction="maximize", sampler=make(name))
    study.optimize(flaky, n_trials=16, catch=(ValueError,))
    assert len(study.trials) == 16
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 8


@pytest.mark.parametrize("name", NAMES)
def test_sqlite_resume_with_a_new_sampler_continues_the_same_sequence(name: str, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    reference = optuna.create_study(direction="maximize", sampler=make(name, seed=3))
    reference.optimize(objective, n_trials=16)

    study = optuna.create_study(study_name="s", storage=url, direction="maximize", sampler=make(name, seed=3))
    study.optimize(objective, n_trials=9)
    del study
    resumed = optuna.load_study(study_name="s", storage=url, sampler=make(name, seed=3))
    resumed.optimize(objective, n_trials=7)
    assert params_seq(resumed) == params_seq(reference)


def _worker(name: str, url: str, seed: int, n: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="w", storage=url, sampler=make(name, seed=seed))
    study.optimize(objective, n_trials=n)


@pytest.mark.parametrize("name", ["evolution", "reinforce", "thompson"])
def test_two_worker_processes_share_one_sqlite_study(name: str, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="w", storage=url, direction="maximize")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(name, url, 0, 10)) for _ in range(2)]  # same seed on purpose
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    study = optuna.load_study(study_name="w", storage=url)
    trials = study.trials
    assert len(trials) == 20 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    keys = [SPACE.key(t.params) for t in trials]
    assert len(set(keys)) >= 18  # workers see each other's trials; a rare simultaneous pick may repeat


@pytest.mark.parametrize("name", NAMES)
def test_multi_objective_pareto_and_weights(name: str) -> None:
    def two(trial: optuna.Trial) -> tuple[float, float]:
        params = SPACE.encode(SPACE.suggest(trial))
        convs = sum(params[n].startswith("nor_conv") for n in params)
        return cell_score(params), float(convs)  # maximise score, minimise convolutions (a cost)

    for extra in ({}, {"weights": [1.0, 2.0]}):
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=make(name, directions=("maximize", "minimize"), **extra))
        study.optimize(two, n_trials=25)
        assert len(study.best_trials) >= 2
        keys = [SPACE.key(t.params) for t in study.trials]
        assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("name", NAMES)
def test_without_a_space_decisions_are_inferred_from_the_study(name: str) -> None:
    def obj(trial: optuna.Trial) -> float:
        ops = [trial.suggest_categorical(f"e{i}", list(OPS)) for i in range(4)]
        depth = trial.suggest_int("depth", 1, 4)
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # not a decision: sampled at random
        assert 1e-4 <= lr <= 1e-1
        return sum(OP_SCORE[o] for o in ops) + depth

    study = optuna.create_study(direction="maximize", sampler=make(name, space=None))
    study.optimize(obj, n_trials=30)
    decisions = [tuple(t.params[k] for k in ("e0", "e1", "e2", "e3", "depth")) for t in study.trials]
    assert len(set(decisions[1:])) == len(decisions[1:])  # after the first trial the decisions are relative
    assert max(t.value for t in study.trials[5:]) > np.mean([t.value for t in study.trials[:5]]) + 2.0


@pytest.mark.parametrize("name", NAMES)
def test_transformer_space_feasible_and_never_repeated(name: str) -> None:
    space = load_space("tiny")

    def obj(trial: optuna.Trial) -> float:
        arch = space.suggest(trial)
        return arch.param_counts().total / 1e6  # minimise parameters, a stand-in for a loss

    study = optuna.create_study(direction="minimize", sampler=make(name, space=space, directions=("minimize",)))
    study.optimize(obj, n_trials=14)
    params = [{n: t.params[n] for n in space.choices()} for t in study.trials]
    assert all(space.is_feasible(p) for p in params)
    keys = [space.key(p) for p in params]
    assert len(set(keys)) == len(keys)
