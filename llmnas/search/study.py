"""Opening studies and reading trials back: all search state lives in the Optuna study.

A run folder ``runs/<study>`` holds ``study.db`` (the default SQLite storage); any Optuna storage URL
works instead. Trials carry their architecture and measurements as user attributes (names in
:data:`TRIAL_ATTRS`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from llmnas.errors import LlmnasError
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
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


class StudyError(LlmnasError):
    """A study or trial that was asked for does not exist."""


STALE_REASON = "its worker stopped sending heartbeats (killed or lost)"


def _record_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna calls this after failing a trial whose worker went silent; the trial is finished by then and
    takes no more attributes, so the reason goes to the study (``fail_reason_<number>``)."""
    study.set_user_attr(f"fail_reason_{trial.number}", STALE_REASON)


def fail_reason(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """Why a trial failed: its own record, or the study's note for a trial failed as stale."""
    return trial.user_attrs.get("fail_reason") or study.user_attrs.get(f"fail_reason_{trial.number}")


def make_storage(
    url: str, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS
) -> optuna.storages.BaseStorage | str:
    """An RDB storage with heartbeats: a killed worker's trial is failed (with the reason), not left RUNNING."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=_record_stale,
        )
    return url


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
    url, name = storage_url_of(location)
    name = study_name or name
    storage = make_storage(url)
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


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first by the first objective (validation loss or bits per byte)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (t.values[0], t.number))


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
