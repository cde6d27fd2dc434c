"""The same scale-out guarantees on Optuna's journal file (``journal:///PATH``), the storage for clusters with a
shared disk and no database server: exact counts, no architecture twice, a killed worker found by heartbeats."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from llmnas.search import load_study
from llmnas.search.storage import HEARTBEAT_ATTR, STALE_REASON, StorageError, make_storage
from llmnas.search.study import fail_reason
from tests.search.test_postgres import (
    PROXY,
    check_study,
    finish,
    kill,
    running_of,
    start_search,
    trials_of,
    write_recipe,
)


def test_three_workers_on_a_journal_file_make_exactly_n_distinct_trials(tmp_path) -> None:
    """REINFORCE here (evolution on PostgreSQL): its policy lives in the study and is read by every worker; it
    never proposes an architecture already asked, running ones included."""
    recipe = write_recipe(tmp_path, n_trials=12, sampler="reinforce", **PROXY)
    journal = f"journal:///{tmp_path / 'shared' / 'study.log'}"
    finish([start_search(recipe, journal), start_search(recipe, journal, "--workers", "2")])
    study = check_study(journal, 12, {}, [])
    assert len({t.user_attrs["arch_id"] for t in study.trials}) == 12
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2


def test_a_worker_killed_on_another_machine_is_failed_by_its_heartbeats_and_retried(tmp_path) -> None:
    recipe = write_recipe(tmp_path, n_trials=3, seconds=1.0, heartbeat_seconds=1, grace_seconds=3)
    journal = f"journal:///{tmp_path / 'shared' / 'study.log'}"
    here, there = start_search(recipe, journal), start_search(recipe, journal, host="machine-b0")
    trial = running_of(journal, there)
    assert HEARTBEAT_ATTR in [t for t in trials_of(journal) if t.number == trial.number][0].system_attrs
    completed = {t.number: t.values for t in trials_of(journal) if t.state == TrialState.COMPLETE}
    kill(there)  # the worker here fails its trial once its heartbeats are 3 s old, and retries it
    finish([here])
    study = check_study(journal, 3, completed, [trial.number])
    assert fail_reason(study, study.trials[trial.number]) == STALE_REASON


def test_a_journal_study_is_read_like_any_other_and_never_created_by_a_reader(tmp_path) -> None:
    path = tmp_path / "study.log"
    with pytest.raises(StorageError, match="no such study journal"):
        make_storage(f"journal:///{path}", create=False)
    assert not path.exists()
    import optuna

    optuna.create_study(study_name="t", storage=make_storage(f"journal:///{path}")).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert [t.state for t in load_study(f"journal:///{path}", "t").trials] == [TrialState.COMPLETE] * 2
