"""Optuna storages for llmnas studies: URL checks, heartbeats, retries of lost trials, the study lock.

A study lives in an Optuna RDB storage (SQLite by default, PostgreSQL or MySQL for many machines).
Every running trial sends heartbeats; a trial whose worker went silent, or whose worker process is
known to be gone, is failed with its reason and queued again (a lost worker says nothing about the
architecture). Workers that share one SQLite file take turns through a file lock when they start a
trial, so that ``n_trials`` is exact however many processes share the study.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from llmnas.errors import LlmnasError

HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
#: How often one trial is queued again after its worker was lost (killed, out of host memory, ...).
MAX_RETRIES = 2
#: Storage URL schemes (SQLAlchemy dialects, optionally ``+driver``) llmnas opens.
SCHEMES = ("sqlite", "postgresql", "mysql")
#: Attributes of a lost trial that its retry does not inherit (the retry writes its own).
NOT_INHERITED = ("worker", "fail_reason")
STALE_REASON = "its worker stopped sending heartbeats (killed or lost)"
#: What to install for the database drivers SQLAlchemy looks for (by module name).
DRIVER_PACKAGES = {
    "psycopg": "pip install 'psycopg[binary]'",
    "psycopg2": "pip install psycopg2-binary",
    "MySQLdb": "pip install mysqlclient, or use mysql+pymysql:// with pip install pymysql",
    "pymysql": "pip install pymysql",
}


class StorageError(LlmnasError):
    """A storage URL that cannot be opened: unknown scheme, missing driver, not a database, ..."""


# ---------------------------------------------------------------------- opening
def check_storage_url(url: str) -> None:
    """One clear error for a URL llmnas cannot open, before anything is created.

    Raises:
        StorageError: the scheme is not one of :data:`SCHEMES`, or its database driver is not installed.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    allowed = "sqlite:///PATH, postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage {url!r}: not a database URL (allowed: {allowed})") from None
    if parsed.get_backend_name() not in SCHEMES:
        raise StorageError(f"storage {url!r}: unknown scheme {parsed.drivername!r} (allowed: {allowed})")
    path = sqlite_path(url)
    if path is not None:
        blocking = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
        if blocking is not None:
            raise StorageError(f"storage {url!r}: {blocking} is a file, not a folder")
        if path.is_dir():
            raise StorageError(f"storage {url!r}: {path} is a folder, not a database file")
        if path.is_file() and path.stat().st_size and not _is_sqlite(path):
            raise StorageError(f"storage {url!r}: {path} is not a SQLite database")
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(f"storage {url!r}: unknown driver {parsed.drivername!r}") from None
    except ImportError as e:
        module = e.name or str(e)
        hint = DRIVER_PACKAGES.get(module, f"pip install {module}")
        raise StorageError(f"storage {url!r}: its database driver {module!r} is not installed: {hint}") from None


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (``None`` for other storages and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def make_storage(
    url: str, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS, *, create: bool = True
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats whose lost trials are failed with their reason and queued again.

    Args:
        url: SQLAlchemy URL of the storage.
        heartbeat: seconds between a running trial's heartbeats.
        grace: seconds of silence after which a running trial counts as lost.
        create: create a missing SQLite file (``False``: a missing file is an error, nothing is written).

    Raises:
        StorageError: the URL cannot be opened (see :func:`check_storage_url`), a missing SQLite file with
            ``create=False``, a file that is not a database, a database of another Optuna schema.
    """
    check_storage_url(url)
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            raise StorageError(f"{path}: no such study database")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    try:
        # Optuna creates its tables when it opens a storage: processes opening one new SQLite file at
        # once (a search and a reader, two searches) would race on them.
        with StudyLock(url):
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=_stale_trial,
            )
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors differ by backend; all mean "cannot open"
        reason = getattr(e, "orig", None) or e
        raise StorageError(f"storage {url!r}: cannot be opened as an Optuna study database: {reason}") from None


# ---------------------------------------------------------------------- lost trials
def worker_id() -> str:
    """``host:pid:start`` of this process (the start time tells a reused pid from the original process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or ``"?"`` where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime); the name before ")" may hold spaces


def worker_gone(worker: str) -> bool:
    """Whether a ``worker_id()`` of this host names a process that no longer runs (other hosts: unknown)."""
    host, _, rest = worker.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return start not in ("", "?") and _process_start(pid) not in (start, "?")


def fail_lost_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Fail (and queue again) the running trials whose worker process on this host is gone; return them.

    A killed worker's trial would otherwise stay RUNNING until its heartbeat grace period ends.
    """
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if not worker or not worker_gone(worker):
            continue
        storage, trial_id = study._storage, t._trial_id
        reason = f"its worker process ({worker.rsplit(':', 1)[0]}) is gone (killed or crashed)"
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first
        failed = storage.get_trial(trial_id)
        retry_trial(study, failed)
        lost.append(failed)
    return lost


def _stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna calls this after failing a trial whose worker went silent. The trial is finished by then
    and takes no more attributes, so the reason goes to the study (``fail_reason_<number>``)."""
    study.set_user_attr(f"fail_reason_{trial.number}", STALE_REASON)
    retry_trial(study, trial)


def retry_trial(study: optuna.Study, trial: FrozenTrial, max_retry: int = MAX_RETRIES) -> FrozenTrial | None:
    """Queue a lost trial again with the same parameters (Optuna's retry attributes, so that
    ``RetryHeartbeatStaleTrialCallback.retried_trial_number`` reads them); ``None`` past ``max_retry``."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > max_retry:
        return None
    system_attrs: dict[str, Any] = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in NOT_INHERITED}
    retry = optuna.create_trial(state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                                user_attrs=user_attrs, system_attrs=system_attrs)
    study.add_trial(retry)
    return retry


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that were queued again (their retry stands in for them)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


# ---------------------------------------------------------------------- the study lock
class StudyLock:
    """An exclusive lock shared by every process that opens the same SQLite study file (``flock`` on
    ``<file>.lock``); it serialises opening the storage (Optuna creates its tables then), creating the
    study and starting trials. Other storages: no lock.

    Re-entrant within a process (opening the storage while holding it to create a study is fine), and
    ``release`` may be called more than once (the trial that was started releases it early).
    """

    _held: dict[Path, tuple[IO[str], int]] = {}  # lock file -> (open handle, depth) in this process

    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        self.path = None if path is None or os.name != "posix" else path.with_name(path.name + ".lock")
        self._mine = False

    def acquire(self) -> None:
        if self.path is None or self._mine:
            return
        key = self.path.resolve()
        if key in self._held:
            handle, depth = self._held[key]
            self._held[key] = (handle, depth + 1)
        else:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a")  # noqa: SIM115 - held until the last release()
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held[key] = (handle, 1)
        self._mine = True

    def release(self) -> None:
        if not self._mine or self.path is None:
            return
        self._mine = False
        key = self.path.resolve()
        handle, depth = self._held[key]
        if depth > 1:
            self._held[key] = (handle, depth - 1)
            return
        import fcntl

        del self._held[key]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def removed_on_error(url: str):
    """Remove a SQLite study file (and its lock file and empty folders) created inside the block if the
    block raises: an early error leaves nothing behind."""
    path = sqlite_path(url)
    new_file = path is not None and not path.exists()
    lock = None if path is None else path.with_name(path.name + ".lock")
    new_lock = lock is not None and not lock.exists()
    missing_dirs = []
    if path is not None:
        parent = path.parent
        while not parent.exists():
            missing_dirs.append(parent)
            parent = parent.parent
    try:
        yield
    except BaseException:
        if new_file and path is not None:
            for leftover in (path, path.with_name(path.name + "-journal")):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
        if new_lock and lock is not None:
            with contextlib.suppress(OSError):
                lock.unlink(missing_ok=True)
            for folder in missing_dirs:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
        raise
