"""Killed workers, processes sharing one study, and what a failed trial means for the next one.

These run real ``llmnas search`` processes on a SQLite study and kill them with SIGKILL, as a crash,
the OOM killer or a pre-empted machine would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from accelerate import Accelerator
from optuna.trial import TrialState

from llmnas.data import prepare_data
from llmnas.recipe import recipe_from_dict
from llmnas.search import load_study, run_search
from llmnas.search.engine import Objective, prepare_space
from llmnas.search.storage import StudyLock, fail_lost_trials, worker_gone, worker_id
from llmnas.search.study import arch_attrs, counted, fail_reason
from tests.conftest import REPO
from tests.search.conftest import STARTED
from tests.search.test_engine import make_recipe


def write_recipe(tmp_path: Path, n_trials: int, seconds: float = 1.5, **search) -> Path:
    raw = make_recipe(tmp_path, n_trials=n_trials, **search)
    raw["train"] = {"max_seconds": seconds, "batch_size": 4, "warmup_steps": 1, "eval_blocks": 8}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path




def start_search(recipe: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "llmnas", "search", str(recipe), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    STARTED.append(proc)
    return proc


def wait_for(db: Path, condition, timeout: float = 240, proc: subprocess.Popen | None = None) -> list:
    """Poll the study until ``condition(trials)`` holds; return the trials (fail at once if ``proc`` ends)."""
    deadline = time.monotonic() + timeout
    seen: object = "no study yet"
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if not db.exists():
            continue
        try:
            trials = load_study(db, "t").trials
        except Exception as e:  # noqa: BLE001 - the study is still being created
            seen, trials = e, None
        if trials is not None:
            seen = [t.state.name for t in trials]
            if condition(trials):
                return trials
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the search ended (exit {proc.returncode}) before the expected state ({seen}): "
                        f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
    pytest.fail(f"the study did not reach the expected state in {timeout} s; last seen: {seen}")


def complete(trials) -> list:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def test_a_killed_search_is_resumed_at_once_to_exactly_n_trials(tmp_path) -> None:
    recipe = write_recipe(tmp_path, n_trials=4)  # the default 120 s grace period: no waiting for it
    db = tmp_path / "runs" / "t" / "study.db"
    proc = start_search(recipe, "--quiet")
    trials = wait_for(db, lambda ts: len(complete(ts)) >= 1 and any(t.state == TrialState.RUNNING for t in ts))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert "leaked semaphore" not in err  # nothing of the killed process is left to clean up
    trials = load_study(db, "t").trials
    killed = [t for t in trials if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    rerun = subprocess.run([sys.executable, "-m", "llmnas", "search", str(recipe)], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load_study(db, "t")
    by_number = {t.number: t for t in study.trials}
    for t in complete(trials):  # finished work is kept as it was
        assert by_number[t.number].values == t.values
    lost = by_number[killed[0].number]
    assert lost.state == TrialState.FAIL and "worker process" in fail_reason(study, lost)
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].params == lost.params and retries[0].state == TrialState.COMPLETE
    assert "(retry of trial" in rerun.stdout
    # n_trials counts the retry, not the lost trial: exactly 4 finished, all complete.
    assert len(counted(study)) == 4 and all(t.state == TrialState.COMPLETE for t in counted(study))


def test_a_killed_worker_process_is_reported_and_its_trial_retried(tmp_path) -> None:
    # Enough trials that the second worker (a fresh process: imports, data) gets to run some.
    recipe = write_recipe(tmp_path, n_trials=16, seconds=0.6)
    db = tmp_path / "runs" / "t" / "study.db"
    proc = start_search(recipe, "--workers", "2")

    def child_running(trials) -> bool:
        return any(t.state == TrialState.RUNNING and f":{proc.pid}:" not in t.user_attrs.get("worker", f":{proc.pid}:")
                   for t in trials)

    trials = wait_for(db, child_running)
    child = next(t for t in trials if t.state == TrialState.RUNNING and f":{proc.pid}:" not in
                 t.user_attrs.get("worker", f":{proc.pid}:"))
    child_pid = int(child.user_attrs["worker"].split(":")[1])
    os.kill(child_pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"worker 1 (pid {child_pid}) was killed by SIGKILL" in out
    assert "leaked semaphore" not in err and "Traceback" not in err
    study = load_study(db, "t")
    lost = study.trials[child.number]
    assert lost.state == TrialState.FAIL and "worker process" in fail_reason(study, lost)
    assert [t.state for t in study.trials if t.system_attrs.get("failed_trial") == lost.number] == [
        TrialState.COMPLETE]
    assert len(counted(study)) == 16 and all(t.state == TrialState.COMPLETE for t in counted(study))


def test_two_searches_create_one_study_together_and_make_exactly_n_trials(tmp_path) -> None:
    recipe = write_recipe(tmp_path, n_trials=7, seconds=0.5)
    procs = [start_search(recipe, "--quiet") for _ in range(2)]  # both find no study and create it
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    study = load_study(tmp_path / "runs" / "t", "t")
    assert len(study.trials) == 7 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both took part


def test_only_a_divergence_is_reused_as_a_failure(tmp_path) -> None:
    """A failure that says something about the architecture (it diverged) is reused; a lost worker or
    an out-of-memory error says nothing about it: the architecture is trained again."""
    recipe = recipe_from_dict(make_recipe(tmp_path))
    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    objective = Objective(recipe, space, data, Accelerator(cpu=True))
    arch = space.sample(0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = space.encode(arch)
    distributions = {k: optuna.distributions.CategoricalDistribution(c) for k, c in space.choices().items()}

    def failed(**attrs):
        study.add_trial(optuna.create_trial(state=TrialState.FAIL, params=params, distributions=distributions,
                                            user_attrs={**arch_attrs(arch), **attrs}))

    failed(fail_reason="out of memory")
    failed(fail_reason="its worker process (host:1) is gone (killed or crashed)")
    study.enqueue_trial(params)
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].state == TrialState.COMPLETE and "reused_from" not in study.trials[-1].user_attrs
    diverged = optuna.create_study()
    diverged.add_trial(optuna.create_trial(state=TrialState.FAIL, params=params, distributions=distributions,
                                           user_attrs={**arch_attrs(arch), "diverged": True,
                                                       "fail_reason": "training diverged: loss nan at step 3"}))
    diverged.enqueue_trial(params)
    diverged.optimize(objective, n_trials=1, catch=(Exception,))
    again = diverged.trials[-1]
    assert again.state == TrialState.FAIL and again.user_attrs["reused_from"] == 0
    assert "diverged" in again.user_attrs["fail_reason"]


def test_lost_trials_on_this_host_are_failed_without_waiting(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.kill()
    dead.wait()
    assert worker_gone(f"{worker_id().split(':')[0]}:{dead.pid}:1")
    assert not worker_gone(worker_id()) and not worker_gone(f"another-host:{dead.pid}:1")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage)
    alive, lost = study.ask(), study.ask()
    alive.set_user_attr("worker", worker_id())
    lost.set_user_attr("worker", f"{worker_id().split(':')[0]}:{dead.pid}:1")
    with StudyLock(storage):
        failed = fail_lost_trials(study)
    assert [t.number for t in failed] == [lost.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]  # the retry is queued
    assert study.trials[2].system_attrs["failed_trial"] == lost.number and "worker" not in study.trials[2].user_attrs


def test_run_search_leaves_optuna_logging_and_threads_alone(tmp_path) -> None:
    code = (
        "import optuna, torch, llmnas.search, llmnas.train, llmnas.cli;"
        "print(optuna.logging.get_verbosity(), torch.get_num_threads())"
    )
    base = "import optuna, torch; print(optuna.logging.get_verbosity(), torch.get_num_threads())"
    outputs = [subprocess.run([sys.executable, "-c", c], capture_output=True, text=True, cwd=REPO).stdout
               for c in (base, code)]
    assert outputs[0] == outputs[1] and outputs[0].strip()
    before = optuna.logging.get_verbosity()
    run_search(recipe_from_dict(make_recipe(tmp_path, n_trials=1)), show_progress=False)
    assert optuna.logging.get_verbosity() == before


OPEN_STUDY = """
import sys
from llmnas.data import prepare_data
from llmnas.recipe import load_recipe
from llmnas.search.engine import open_study, prepare_space
recipe = load_recipe(sys.argv[1])
data = prepare_data(recipe.data)
open_study(recipe, prepare_space(recipe, data), data)
"""


def test_four_processes_create_one_new_study_at_once(tmp_path) -> None:
    """Optuna alone fails here most of the time ("table studies already exists", "UNIQUE constraint failed:
    alembic_version"): the processes take turns creating the storage and the study."""
    recipe = write_recipe(tmp_path, n_trials=1)
    from llmnas.data import prepare_data  # tokenise once, so the processes start together

    prepare_data(recipe_from_dict(yaml.safe_load(recipe.read_text())).data)
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STUDY, str(recipe)], cwd=REPO, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)[-3000:]
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'runs/t/study.db'}")] == ["t"]


def test_an_interrupted_search_queues_its_trial_again(tmp_path) -> None:
    recipe = write_recipe(tmp_path, n_trials=2, seconds=3.0)
    db = tmp_path / "runs" / "t" / "study.db"
    proc = start_search(recipe, "--quiet")
    wait_for(db, lambda ts: any(t.state == TrialState.RUNNING for t in ts), proc=proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    study = load_study(db, "t")
    interrupted = study.trials[0]
    assert interrupted.state == TrialState.FAIL and fail_reason(study, interrupted) == "interrupted (Ctrl-C)"
    assert study.trials[1].state == TrialState.WAITING and study.trials[1].params == interrupted.params
    study = run_search(recipe_from_dict(yaml.safe_load(recipe.read_text())), show_progress=False).study
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 2
    assert study.trials[1].params == interrupted.params  # the retry ran first
