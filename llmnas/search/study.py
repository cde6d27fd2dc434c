"""Opening studies and reading trials back: all search state lives in the Optuna study.

A run folder ``runs/<study>`` holds ``study.db`` (the default SQLite storage); any Optuna storage URL
works instead. Trials carry their architecture and measurements as user attributes (names in
:data:`TRIAL_ATTRS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from llmnas.errors import LlmnasError
from llmnas.search.storage import make_storage, retried_numbers
from llmnas.space.arch import Architecture

#: User attributes every trained (or reused) trial records.
TRIAL_ATTRS = (
    "arch",  # canonical architecture JSON
    "arch_id",
    "params",
    "active_params",
    "non_embedding_params",
    "flops_per_token",
    "kv_cache_bytes_per_token",
    "val_loss",  # nats/token on the whole validation split
    "bits_per_byte",
    "bits_per_char",
    "tokens",  # training tokens seen
    "steps",
    "train_seconds",
    "tokens_per_second",
)


class StudyError(LlmnasError):
    """A study or trial that was asked for does not exist."""


def fail_reason(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """Why a trial failed: its own record, or the study's note for a trial failed as stale."""
    return trial.user_attrs.get("fail_reason") or study.user_attrs.get(f"fail_reason_{trial.number}")


def storage_url_of(location: str | Path) -> tuple[str, str | None]:
    """``(storage URL, study name or None)`` for a run folder, a ``study.db`` file or a URL."""
    text = str(location)
    if "://" in text:
        return text, None
    path = Path(location)
    if path.is_dir():
        db = path / "study.db"
        if not db.is_file():
            raise StudyError(f"{path}: no study.db in this folder (is it a run folder runs/<study>?)")
        return f"sqlite:///{db}", path.name
    if path.is_file():
        return f"sqlite:///{path}", None
    raise StudyError(f"{path}: not found (give a run folder runs/<study>, a study.db file or a storage URL)")


def load_study(location: str | Path, study_name: str | None = None) -> optuna.Study:
    """An existing study, from a run folder, a ``study.db`` file or a storage URL (nothing is created)."""
    url, name = storage_url_of(location)
    name = study_name or name
    storage = make_storage(url, create=False)
    if name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if len(names) != 1:
            raise StudyError(f"{location}: holds studies {names}; name one with --study")
        name = names[0]
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StudyError(f"{location}: no study named {name!r} (studies there: {names})") from None


def counted(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward ``n_trials``: all but the failed ones that were queued again (a trial
    lost with its worker is retried; its retry counts instead) and those started beyond ``n_trials`` while
    a database restart had freed the study lock (``surplus``, see :func:`llmnas.search.engine.run_trials`)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials
            if not (t.state == TrialState.FAIL and t.number in retried) and "surplus" not in t.user_attrs]


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials with a final outcome: complete, pruned, or failed and not queued again."""
    return [t for t in counted(study) if t.state.is_finished()]


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first by the first objective (validation loss or bits per byte)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (t.values[0], t.number))


def best_distinct(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best completed trials with distinct architectures (a repeat counts once)."""
    picked, seen = [], set()
    for t in ranked(study):
        if t.user_attrs["arch_id"] not in seen and len(picked) < k:
            seen.add(t.user_attrs["arch_id"])
            picked.append(t)
    return picked


def select_trial(study: optuna.Study, which: str) -> FrozenTrial:
    """``best`` (lowest first objective), or a trial number."""
    done = ranked(study)
    if which == "best":
        if not done:
            raise StudyError(f"study {study.study_name!r} has no completed trial yet")
        return done[0]
    try:
        number = int(which)
    except ValueError:
        raise StudyError(f"--trial {which!r}: give 'best' or a trial number") from None
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            if "arch" not in t.user_attrs:
                raise StudyError(f"trial {number} of study {study.study_name!r} has no architecture recorded")
            return t
    raise StudyError(f"study {study.study_name!r} has no trial {number} (it has {len(study.trials)})")


def trial_arch(trial: FrozenTrial) -> Architecture:
    return Architecture.from_json(trial.user_attrs["arch"], source=f"trial {trial.number}")


def arch_attrs(arch: Architecture) -> dict[str, Any]:
    counts = arch.param_counts()
    return {
        "arch": arch.to_json(),
        "arch_id": arch.id,
        "n_layers": arch.n_layers,
        "d_model": arch.d_model,
        "params": counts.total,
        "active_params": counts.active,
        "non_embedding_params": counts.non_embedding,
        "flops_per_token": arch.flops_per_token(),
        "kv_cache_bytes_per_token": arch.kv_cache_bytes_per_token(),
    }
