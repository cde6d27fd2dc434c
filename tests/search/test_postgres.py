"""Many workers on one study in a real PostgreSQL server: exact counts, no architecture twice, killed
workers, a restarted server, and bad URLs (issue 10).

The server is a throw-away cluster (``tests/search/pg_server.py``); the workers are real ``llmnas search``
processes, some posing as another machine (another host name: only heartbeats can tell that its worker is
gone), killed with SIGKILL as a crash, the OOM killer or a pre-empted machine would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from accelerate import Accelerator
from optuna.trial import TrialState

from llmnas.data import prepare_data
from llmnas.recipe import recipe_from_dict
from llmnas.search import load_study
from llmnas.search.engine import Objective, open_study, prepare_space, run_trials
from llmnas.search.storage import STALE_REASON, StorageError, make_storage, with_reconnect
from llmnas.search.study import arch_attrs, counted, fail_reason
from tests.conftest import REPO
from tests.search.conftest import STARTED
from tests.search.pg_server import PgServer, free_port, require_driver
from tests.search.test_engine import make_recipe
from tests.test_bad_input import BASE, Row, check_row

#: Trials scored by the parameter count (milliseconds, no training): the storage is all that is measured.
PROXY = {"evaluator": "proxy", "proxy": "params", "objectives": ["neg_params"]}
#: A space of four architectures, for searches that must meet the same architecture again.
FOUR_ARCHS = """
name: four
vocab_size: 65
max_seq_len: 32
d_model: [32, 48]
n_layers: [1]
layer:
  n_heads: [2, 4]
"""
#: ``llmnas search`` as on a machine of another name: its trials' workers cannot be checked by pid here.
OTHER_MACHINE = ("import socket, sys; host = sys.argv.pop(1); socket.gethostname = lambda: host; "
                 "from llmnas.cli import main; sys.exit(main(sys.argv[1:]))")


def write_recipe(tmp_path: Path, n_trials: int, seconds: float | None = None, space: str | None = None,
                 **search) -> Path:
    """A recipe over the micro space (or ``space``), tokenised here once; trials train for ``seconds``."""
    raw = make_recipe(tmp_path, **({"space": space} if space else {}), n_trials=n_trials, **search)
    if seconds is not None:
        raw["train"] = {"max_seconds": seconds, "batch_size": 4, "warmup_steps": 1, "eval_blocks": 8}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    prepare_data(recipe_from_dict(raw).data)  # the workers start together, not one after the tokenising
    return path


def start_search(recipe: Path, storage: str, *args: str, host: str | None = None) -> subprocess.Popen:
    """``llmnas search RECIPE --storage URL`` in a process group of its own; ``host``: as that machine."""
    cmd = [sys.executable, "-m", "llmnas"] if host is None else [sys.executable, "-c", OTHER_MACHINE, host]
    proc = subprocess.Popen([*cmd, "search", str(recipe), "--storage", storage, "--quiet", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    STARTED.append(proc)
    return proc


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    """Wait for every search; each must exit 0. Their standard errors."""
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        errors.append(err)
    return errors


_OPEN: dict[str, optuna.Study] = {}


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials now (the study is opened once: opening it costs more than reading it)."""
    try:
        if storage not in _OPEN:
            _OPEN[storage] = load_study(storage, "t")
        return _OPEN[storage].get_trials()
    except Exception:  # noqa: BLE001 - the study is still being created
        return []


def running_of(storage: str, proc: subprocess.Popen, timeout: float = 120) -> optuna.trial.FrozenTrial:
    """A trial of ``proc``'s worker that has been running for a moment (fail at once if ``proc`` ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in trials_of(storage):
            if t.state == TrialState.RUNNING and f":{proc.pid}:" in t.user_attrs.get("worker", ""):
                time.sleep(0.3)
                return t
        if proc.poll() is not None:
            pytest.fail(f"the search ended (exit {proc.returncode}) before running a trial: "
                        f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        time.sleep(0.2)
    pytest.fail(f"no running trial of process {proc.pid} in {timeout} s")


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def check_study(storage: str, n_trials: int, completed: dict[int, list[float]], killed: list[int]) -> optuna.Study:
    """Exactly ``n_trials`` counted trials, all complete; what completed before is unchanged; every killed trial
    failed with its reason and was queued again, and its retry completed. The study."""
    study = load_study(storage, "t")
    by_number = {t.number: t for t in study.trials}
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * n_trials
    for number, values in completed.items():
        assert by_number[number].values == values
    for number in killed:
        lost = by_number[number]
        assert lost.state == TrialState.FAIL and fail_reason(study, lost), number
        retries = [t for t in study.trials if number in t.system_attrs.get("retry_history", [])]
        assert retries and retries[0].params == lost.params, number
        assert any(r.state == TrialState.COMPLETE for r in retries), number
    return study


# ---------------------------------------------------------------------- many workers
def test_eight_workers_on_one_postgres_study_make_exactly_n_distinct_trials(tmp_path, pg_url) -> None:
    """Six separate searches (as on six machines) and one with --workers 2: eight worker processes. The
    evolution sampler never proposes an architecture already asked, which holds only if every worker's
    sampler sees the architectures the others have just started."""
    recipe = write_recipe(tmp_path, n_trials=24, sampler="evolution", **PROXY)
    procs = [start_search(recipe, pg_url) for _ in range(6)]
    procs.append(start_search(recipe, pg_url, "--workers", "2"))
    finish(procs)
    study = check_study(pg_url, 24, {}, [])
    assert len({t.user_attrs["arch_id"] for t in study.trials}) == 24
    assert not any("reused_from" in t.user_attrs for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 3  # they shared the work


def test_thompson_workers_on_one_postgres_study_never_repeat_an_architecture(tmp_path, pg_url) -> None:
    """The third llmnas sampler (evolution above, REINFORCE on the journal file): Thompson sampling's model is
    fitted on what every worker has recorded, and it never proposes an architecture already asked."""
    recipe = write_recipe(tmp_path, n_trials=12, sampler="thompson", **PROXY)
    finish([start_search(recipe, pg_url), start_search(recipe, pg_url), start_search(recipe, pg_url, "--workers", "2")])
    study = check_study(pg_url, 12, {}, [])
    assert len({t.user_attrs["arch_id"] for t in study.trials}) == 12
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_repeat_waits_for_the_running_trial_of_its_architecture(tmp_path, pg_url) -> None:
    """A trial whose architecture another worker is training (an earlier trial, still running) waits for it and
    takes its result: no architecture is trained twice, even by workers that draw it at the same moment."""
    raw = make_recipe(tmp_path, space=FOUR_ARCHS, n_trials=2, storage=pg_url)
    recipe = recipe_from_dict(raw)
    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    study = open_study(recipe, space, data)
    arch = space.sample(0)
    study.enqueue_trial(space.encode(arch))
    other = study.ask()  # "another worker" training the architecture
    space.suggest(other)
    for key, value in arch_attrs(arch).items():
        other.set_user_attr(key, value)
    study.enqueue_trial(space.encode(arch))
    objective = Objective(recipe, space, data, Accelerator(cpu=True))
    here = threading.Thread(target=lambda: open_study(recipe, space, data).optimize(objective, n_trials=1))
    here.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and study.trials[-1].user_attrs.get("waited_for") != other.number:
        time.sleep(0.2)
    waiting = study.trials[-1]
    assert waiting.number > other.number and waiting.user_attrs.get("waited_for") == other.number
    assert waiting.state == TrialState.RUNNING and "val_loss" not in waiting.user_attrs  # not trained
    study.tell(other, 1.25)
    here.join(timeout=60)
    done = study.trials[waiting.number]
    assert done.state == TrialState.COMPLETE and done.values == [1.25]
    assert done.user_attrs["reused_from"] == other.number


# ---------------------------------------------------------------------- faults
def test_killed_workers_here_and_on_another_machine_are_failed_and_retried(tmp_path, pg_url) -> None:
    """Two SIGKILL cycles: a worker on another machine" (only its silence tells: a heartbeat every
    second, three seconds of grace) and one on this host (its pid tells at once, if its heartbeats have not told
    already), each replaced at once (the other machine by a new one)."""
    recipe = write_recipe(tmp_path, n_trials=4, seconds=1.0, heartbeat_seconds=1, grace_seconds=3)
    here, there = start_search(recipe, pg_url), start_search(recipe, pg_url, host="machine-b0")
    completed, killed = {}, []
    for cycle, victim in enumerate(("there", "here")):
        proc = there if victim == "there" else here
        trial = running_of(pg_url, proc)
        completed.update({t.number: t.values for t in trials_of(pg_url) if t.state == TrialState.COMPLETE})
        kill(proc)
        killed.append(trial.number)
        if victim == "there":
            there = start_search(recipe, pg_url, host=f"machine-b{cycle + 1}")
        else:
            here = start_search(recipe, pg_url)
    finish([here, there])
    study = check_study(pg_url, 4, completed, killed)
    assert fail_reason(study, study.trials[killed[0]]) == STALE_REASON  # the other machine's: by heartbeat only
    reason = fail_reason(study, study.trials[killed[1]])
    assert reason == STALE_REASON or "its worker process" in reason


def test_workers_wait_for_a_restarted_server_and_lose_nothing(tmp_path, pg_url, postgres: PgServer) -> None:
    recipe = write_recipe(tmp_path, n_trials=4, seconds=1.5, heartbeat_seconds=1, grace_seconds=30)
    procs = [start_search(recipe, pg_url) for _ in range(2)]
    for p in procs:
        running_of(pg_url, p)
    completed = {t.number: t.values for t in trials_of(pg_url) if t.state == TrialState.COMPLETE}
    postgres.stop("fast")  # ends every connection
    time.sleep(2.0)
    postgres.start()
    errors = finish(procs)
    assert any("reconnected after" in err for err in errors), errors
    study = check_study(pg_url, 4, completed, [])
    assert not [t for t in study.trials if t.state == TrialState.FAIL]


def test_a_trial_started_while_a_restart_had_freed_the_study_lock_gives_way(postgres: PgServer, pg_url) -> None:
    """The study lock (an advisory lock) dies with its connection: when the server restarts during a turn,
    another process may count the trials without this one. The turn's end notices and, if the others make
    ``n_trials`` without it, the trial gives way (failed as surplus, not counted) instead of overshooting."""
    db = pg_url.rsplit("/", 1)[1]

    class RestartMidTurn(optuna.samplers.RandomSampler):
        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            # what a restart does to the lock's session, and what another worker does meanwhile
            locks = postgres.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory'", db=db)
            assert len(locks) == 1
            postgres.execute(f"SELECT pg_terminate_backend({locks[0][0]})", db=db)
            study.add_trial(optuna.create_trial(value=2.0))

    study = optuna.create_study(study_name="t", storage=make_storage(pg_url), sampler=RestartMidTurn())
    study.add_trial(optuna.create_trial(value=1.0))
    called = []
    run_trials(study, called.append, pg_url, n_trials=2, deadline=None, callbacks=[])
    assert not called  # the objective never ran
    surplus = study.trials[1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["surplus"] is True
    assert "database restart had freed the study lock" in fail_reason(study, surplus)
    assert [t.values for t in counted(study)] == [[1.0], [2.0]]


def test_a_server_that_does_not_come_back_stops_the_worker_with_a_clear_error() -> None:
    import sqlalchemy

    require_driver()
    url = f"postgresql://llmnas@127.0.0.1:{free_port()}/db"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"connection was lost and did not come back in 1 s: .*refused"):
        with_reconnect(lambda: engine.connect().close(), url, seconds=1)
    assert time.monotonic() - started < 30  # bounded: it gave up


# ---------------------------------------------------------------------- bad input
def _older_schema(server: PgServer, url: str) -> None:
    optuna.create_study(study_name="other", storage=url)
    server.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'", db=url.rsplit("/", 1)[1])


def _search_once(tmp: Path, url: str) -> None:
    """One trial of the bad-input recipe on ``url``: the study the other recipe then meets."""
    from llmnas.cli import main

    for rel, content in BASE.items():
        (tmp / rel).write_text(content.replace("{tmp}", str(tmp)))
    assert main(["search", str(tmp / "r.yaml"), "--storage", url, "--n-trials", "1", "--quiet"]) == 0


BAD = {
    "unreachable": lambda s, url: Row(["search", "{tmp}/r.yaml", "--storage", f"postgresql://llmnas@127.0.0.1:"
                                       f"{free_port()}/db"], ["cannot connect", "refused"], BASE),
    "wrong-password": lambda s, url: Row(["search", "{tmp}/r.yaml", "--storage", url.replace(":llmnas-test@", ":no@")],
                                         ["cannot connect", "password authentication failed", "llmnas:***@"], BASE),
    "no-such-database": lambda s, url: Row(["search", "{tmp}/r.yaml", "--storage", url + "_missing"],
                                           ["cannot connect", "does not exist"], BASE),
    "another-schema-version": lambda s, url: Row(
        ["search", "{tmp}/r.yaml", "--storage", url], ["schema version 'v3.0.0.d'", "optuna storage upgrade"], BASE,
        setup=lambda tmp: _older_schema(s, url), keeps_token_cache=True),
    "study-of-another-recipe": lambda s, url: Row(
        ["search", "{tmp}/r.yaml", "--storage", url, "--set", "train.max_steps=3"],
        ["study 't' in postgresql://llmnas:***@", "was started with a different train"], BASE,
        setup=lambda tmp: _search_once(tmp, url)),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_postgres_storage(name, tmp_path, monkeypatch, capsys, postgres: PgServer, pg_url) -> None:
    """One clear error each, exit 2, no file written and nothing written to the database."""
    row = BAD[name](postgres, pg_url)

    def database() -> list:
        tables = [r[0] for r in postgres.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                                 "ORDER BY tablename", db=pg_url.rsplit("/", 1)[1])]
        return [(t, postgres.execute(f"SELECT * FROM {t} ORDER BY 1", db=pg_url.rsplit("/", 1)[1])) for t in tables]

    setup = row.setup
    before: list = []

    def set_up(tmp: Path) -> None:
        if setup is not None:
            setup(tmp)
        before.extend(database())

    row.setup = set_up
    check_row(row, tmp_path, monkeypatch, capsys)
    assert database() == before
