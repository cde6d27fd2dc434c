"""Optuna storages for llmnas studies: URL checks, heartbeats, retries of lost trials, the study lock.

A study lives in an Optuna storage: a SQLite file by default; a PostgreSQL (or MySQL) database for many
machines; or, for clusters without a database server, an Optuna journal file on a shared disk
(``journal:///PATH``, written like ``sqlite:///PATH``: relative after three slashes, absolute with four).

Every running trial sends heartbeats (the journal file gets them too, as a trial system attribute); a
trial whose worker went silent, or whose worker process on this host is known to be gone, is failed with
its reason and queued again (a lost worker says nothing about the architecture). Processes sharing a study
take turns through the study lock from counting the trials to recording the next trial's architecture, so
that ``n_trials`` is exact and every sampler sees the architectures already started: a file lock beside a
SQLite or journal file, a PostgreSQL advisory lock on a database server. Calls to a database server survive
a restart of the server: a call that lost its connection is retried for :data:`RECONNECT_SECONDS`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # the interface fail_stale_trials reads; not exported
from optuna.trial import FrozenTrial, TrialState

from llmnas.errors import LlmnasError

HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
#: How often one trial is queued again after its worker was lost (killed, out of host memory, ...).
MAX_RETRIES = 2
#: Storage URL schemes (SQLAlchemy dialects, optionally ``+driver``) llmnas opens, besides ``journal:///PATH``.
SCHEMES = ("sqlite", "postgresql", "mysql")
JOURNAL = "journal:///"
#: How long calls to a database server are retried after the connection was lost (a restart, a failover).
#: Keep it below the heartbeat grace period, or live trials would be failed as stale after a long outage.
RECONNECT_SECONDS = 60
#: Seconds to wait for a database server when connecting.
CONNECT_TIMEOUT = 10
#: The trial system attribute a journal-file study's heartbeats write (seconds since the epoch).
HEARTBEAT_ATTR = "llmnas:heartbeat"
#: The PostgreSQL advisory lock key of the study lock (one per database, as one lock file per SQLite file).
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"llmnas study lock").digest()[:8], "big", signed=True)
#: Attributes of a lost trial that its retry does not inherit (the retry writes its own).
NOT_INHERITED = ("worker", "fail_reason")
STALE_REASON = "its worker stopped sending heartbeats (killed or lost)"
#: What to install for the database drivers SQLAlchemy looks for (by module name).
DRIVER_PACKAGES = {
    "psycopg": "pip install 'llmnas[postgres]' (psycopg 3)",
    "psycopg2": "pip install 'llmnas[postgres]' (psycopg 3), or pip install psycopg2-binary",
    "MySQLdb": "pip install mysqlclient, or use mysql+pymysql:// with pip install pymysql",
    "pymysql": "pip install pymysql",
}


class StorageError(LlmnasError):
    """A storage URL that cannot be opened: unknown scheme, missing driver, not a database, ..."""


# ---------------------------------------------------------------------- opening
def check_storage_url(url: str) -> None:
    """One clear error for a URL llmnas cannot open, before anything is created.

    Raises:
        StorageError: the scheme is not one of :data:`SCHEMES` or ``journal:///``, its database driver is not
            installed, or its file cannot be one (a folder, a file of another kind, under a file).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    allowed = "sqlite:///PATH, postgresql://USER@HOST/DB, mysql://USER@HOST/DB or journal:///PATH"
    if url.startswith("journal:"):
        path = journal_path(url)
        if path is None:
            raise StorageError(f"storage {url!r}: a journal file is journal:///PATH (a relative path) or "
                               "journal:////PATH (an absolute one)")
        _check_file(url, path, "journal", _is_journal)
        return
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage {url!r}: not a database URL (allowed: {allowed})") from None
    if parsed.get_backend_name() not in SCHEMES:
        raise StorageError(f"storage {shown(url)!r}: unknown scheme {parsed.drivername!r} (allowed: {allowed})")
    path = sqlite_path(url)
    if path is not None:
        _check_file(url, path, "SQLite", _is_sqlite)
    try:
        make_url(driver_url(url)).get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(f"storage {shown(url)!r}: unknown driver {parsed.drivername!r}") from None
    except ImportError as e:
        module = e.name or str(e)
        hint = DRIVER_PACKAGES.get(module, f"pip install {module}")
        raise StorageError(
            f"storage {shown(url)!r}: its database driver {module!r} is not installed: {hint}") from None


def _check_file(url: str, path: Path, kind: str, is_kind: Callable[[Path], bool]) -> None:
    blocking = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
    if blocking is not None:
        raise StorageError(f"storage {url!r}: {blocking} is a file, not a folder")
    if path.is_dir():
        raise StorageError(f"storage {url!r}: {path} is a folder, not a {'database' if kind == 'SQLite' else kind} "
                           "file")
    if path.is_file() and path.stat().st_size and not is_kind(path):
        raise StorageError(f"storage {url!r}: {path} is not a {kind} {'database' if kind == 'SQLite' else 'file'}")


def _is_journal(path: Path) -> bool:
    """Whether the file starts as an Optuna journal does (one JSON operation per line)."""
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and "op_code" in first


def shown(url: str) -> str:
    """The URL as it may be printed: its password hidden."""
    if "@" not in url or url.startswith(JOURNAL):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def dashboard_url(url: str) -> str:
    """What to give optuna-dashboard for this storage: a journal file's path, a database URL without its
    password (the dashboard asks for nothing; the user puts the password back)."""
    path = journal_path(url)
    return str(path) if path is not None else shown(url)


def driver_url(url: str) -> str:
    """The URL with the PostgreSQL driver that is installed: ``postgresql://`` means psycopg 3 for SQLAlchemy
    2.1 and psycopg2 for 2.0; llmnas takes whichever of the two is there (psycopg 3 first)."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    return url


def is_server(url: str) -> bool:
    """Whether the storage is a database server (PostgreSQL, MySQL) rather than a file on this machine."""
    return not url.startswith(("sqlite:", "journal:"))


def check_storage_reachable(url: str, timeout: int = CONNECT_TIMEOUT) -> None:
    """Connect to a database server once (nothing is written): one clear error for a server that does not
    answer, a wrong user or password, a database that does not exist. Files: nothing to do.

    Raises:
        StorageError: the server cannot be reached or refuses the connection.
    """
    if not is_server(url):
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": timeout})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as e:
        raise StorageError(f"storage {shown(url)!r}: cannot connect: {_reason(e)}") from None
    finally:
        engine.dispose()


def _reason(e: BaseException) -> str:
    """A database error on one line, without SQLAlchemy's background links."""
    text = str(getattr(e, "orig", None) or e)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip() and "sqlalche.me" not in line)


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


def journal_path(url: str) -> Path | None:
    """The file of a ``journal:///PATH`` URL (``None`` for other storages)."""
    if not url.startswith(JOURNAL) or url == JOURNAL:
        return None
    return Path(url.removeprefix(JOURNAL))


def file_path(url: str) -> Path | None:
    """The study file of a SQLite or journal storage (``None`` for a database server)."""
    return sqlite_path(url) or journal_path(url)


def make_storage(
    url: str, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS, *, create: bool = True
) -> optuna.storages.BaseStorage:
    """A storage with heartbeats whose lost trials are failed with their reason and queued again.

    Args:
        url: SQLAlchemy URL of the storage, or ``journal:///PATH``.
        heartbeat: seconds between a running trial's heartbeats.
        grace: seconds of silence after which a running trial counts as lost.
        create: create a missing SQLite or journal file (``False``: a missing file is an error, nothing is
            written).

    Raises:
        StorageError: the URL cannot be opened (see :func:`check_storage_url`), a missing file with
            ``create=False``, a file that is not a database, a database of another Optuna schema version.
    """
    check_storage_url(url)
    path = file_path(url)
    if path is not None:
        if not create and not path.is_file():
            raise StorageError(f"{path}: no such study {'journal' if journal_path(url) else 'database'}")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    if journal_path(url) is not None:
        return HeartbeatJournalStorage(journal_path(url), heartbeat, grace, _stale_trial)
    if url.startswith("sqlite:"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
        storage_class: type[optuna.storages.RDBStorage] = optuna.storages.RDBStorage
    else:  # a dead pooled connection (server restarted) is replaced before use
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
        storage_class = ReconnectingRDBStorage
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    try:
        # Optuna creates its tables when it opens a storage: processes opening one new database at once
        # (a search and a reader, two searches) would race on them.
        with StudyLock(url, wait=False):
            check_schema(url, engine_kwargs)
            return storage_class(
                driver_url(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=_stale_trial,
            )
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors differ by backend; all mean "cannot open"
        raise StorageError(f"storage {shown(url)!r}: cannot be opened as an Optuna study database: {_reason(e)}") \
            from None


@functools.cache
def optuna_schema() -> str:
    """The schema version (alembic revision) of this Optuna's tables."""
    return optuna.storages.RDBStorage("sqlite:///:memory:").get_head_version()


def check_schema(url: str, engine_kwargs: dict[str, Any] | None = None) -> None:
    """Refuse a database whose Optuna tables are of another schema version before Optuna opens it (opening
    creates the tables a version lacks: it would write to a database it then refuses).

    Raises:
        StorageError: the tables are of another schema version (the message says how to upgrade).
    """
    if sqlite_path(url) is not None and not sqlite_path(url).is_file():
        return
    import sqlalchemy

    connect_args = (engine_kwargs or {}).get("connect_args", {})
    engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table("alembic_version"):
                return
            version = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    if version != optuna_schema():
        raise StorageError(
            f"storage {shown(url)!r}: its Optuna tables are schema version {version!r}; Optuna {optuna.__version__} "
            f"uses {optuna_schema()!r}. Back the database up and run `optuna storage upgrade --storage URL`, or use "
            "the Optuna version that created it"
        )


# ---------------------------------------------------------------------- database restarts
_T = TypeVar("_T")
_retrying = threading.local()  # set while a call is being retried: the calls inside it do not retry again


def connection_lost(e: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) means the database connection was lost or refused."""
    import sqlalchemy

    while e is not None:
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def with_reconnect(call: Callable[[], _T], url: str, seconds: float = RECONNECT_SECONDS) -> _T:
    """``call()``, retried with growing pauses while the database connection is lost, for up to ``seconds``.

    A transaction cut off by a lost connection was rolled back by the server, so repeating it is safe (the
    one exception, a commit whose answer was lost, is a window of microseconds per call).

    Raises:
        StorageError: the connection did not come back within ``seconds``.
    """
    if getattr(_retrying, "active", False):
        return call()
    _retrying.active = True
    deadline, pause, lost = time.monotonic() + seconds, 0.2, None
    try:
        while True:
            try:
                result = call()
            except Exception as e:
                if not connection_lost(e):
                    raise
                if lost is None:
                    lost = time.monotonic()
                    print(f"llmnas: storage {shown(url)}: connection lost ({_reason(e)[:200]}); reconnecting for up "
                          f"to {seconds:g} s", file=sys.stderr, flush=True)
                if time.monotonic() > deadline:
                    raise StorageError(f"storage {shown(url)!r}: the connection was lost and did not come back in "
                                       f"{seconds:g} s: {_reason(e)}") from None
                time.sleep(pause)
                pause = min(2 * pause, 5.0)
                continue
            if lost is not None:
                print(f"llmnas: storage {shown(url)}: reconnected after {time.monotonic() - lost:.1f} s",
                      file=sys.stderr, flush=True)
            return result
    finally:
        _retrying.active = False


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` whose calls wait for a database server that restarts: each call
    that loses its connection is retried (:func:`with_reconnect`), the heartbeats' too."""


def _reconnecting(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def call(self: ReconnectingRDBStorage, *args: Any, **kwargs: Any) -> _T:
        return with_reconnect(lambda: method(self, *args, **kwargs), self.url)

    return call


_NOT_RETRIED = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "remove_session", "upgrade",
                "get_current_version", "get_head_version", "get_all_versions"}
# Optuna wraps an RDB storage in its cache, which calls these private methods of it besides the public ones.
_CALLED_BY_CACHE = {"_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
                    "_get_stale_trial_ids"}
for _name, _method in vars(optuna.storages.RDBStorage).items():
    if callable(_method) and (not _name.startswith("_") or _name in _CALLED_BY_CACHE) and _name not in _NOT_RETRIED:
        setattr(ReconnectingRDBStorage, _name, _reconnecting(_method))


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage with heartbeats, which Optuna gives only its RDB storage: a running trial
    writes the time to a system attribute every ``heartbeat`` seconds; a trial silent for ``grace`` seconds is
    stale. The times are each machine's own clock: the machines sharing the file must keep their clocks
    within a few seconds of each other (NTP), far less than the grace period."""

    def __init__(self, path: Path, heartbeat: int, grace: int,
                 stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        from optuna.storages.journal import JournalFileBackend

        super().__init__(JournalFileBackend(str(path)))
        self.path, self.heartbeat_interval, self.grace_period = path, heartbeat, grace
        self.stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # the trial ended meanwhile
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials silent for the grace period; one never heard from counts from its start (its worker
        may have died before its first heartbeat)."""
        now, stale = time.time(), []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.system_attrs.get(HEARTBEAT_ATTR) or (t.datetime_start.timestamp() if t.datetime_start else now)
            if now - last > self.grace_period:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_callback


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
    system_attrs: dict[str, Any] = {**{k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR},
                                    "failed_trial": history[0], "retry_history": history}
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
    """An exclusive lock shared by every process, on any machine, that opens the same study storage; it
    serialises opening the storage (Optuna creates its tables then), creating the study and, for each trial,
    counting the trials, creating the next one and recording its architecture.

    - SQLite or journal file: ``flock`` on :func:`lock_path` beside it (on a shared disk too: NFS v4 passes
      ``flock`` to the server as a lock of the whole file).
    - PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) on a connection of its own, taken for
      the whole database as the file lock is for the whole file. The server frees it when that connection
      ends: a killed worker's at once, a vanished machine's after TCP keepalives (about a minute). A server
      restart frees it too: :meth:`release` then says so, and the holder checks its count again.
    - MySQL: no lock (``n_trials`` may be passed by a trial or two there).

    Re-entrant within a process (opening the storage while holding it to create a study is fine), and
    ``release`` may be called more than once (the trial that was started releases it early).

    Args:
        url: the storage URL.
        wait: wait for a database server that does not answer (a restart) for up to :data:`RECONNECT_SECONDS`;
            ``False`` fails at once (opening a storage: a wrong URL is an error, not a wait).
    """

    _held: dict[str, tuple[Any, int]] = {}  # lock -> (open file or connection, depth) in this process

    def __init__(self, url: str, *, wait: bool = True) -> None:
        self.url, self.wait = url, wait
        path = file_path(url)
        self.path = None if path is None or os.name != "posix" else lock_path(url)
        self.pg = path is None and url.startswith(("postgresql", "postgres:"))
        self.key = str(self.path.resolve()) if self.path is not None else url if self.pg else None
        self._mine = False

    def acquire(self) -> None:
        if self.key is None or self._mine:
            return
        if self.key in self._held:
            handle, depth = self._held[self.key]
            self._held[self.key] = (handle, depth + 1)
        elif self.path is not None:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a")  # noqa: SIM115 - held until the last release()
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held[self.key] = (handle, 1)
        else:
            connect = functools.partial(_advisory_lock, self.url)
            self._held[self.key] = (with_reconnect(connect, self.url) if self.wait else connect(), 1)
        self._mine = True

    def release(self) -> bool:
        """Release the lock; ``False`` if it was lost while held (a restart of the database server frees it)."""
        if not self._mine or self.key is None:
            return True
        self._mine = False
        handle, depth = self._held[self.key]
        if depth > 1:
            self._held[self.key] = (handle, depth - 1)
            return True
        del self._held[self.key]
        if self.path is not None:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            return True
        import sqlalchemy

        try:
            handle.execute(sqlalchemy.text("SELECT 1"))  # the session that holds the lock is still there
            held = True
        except Exception:  # noqa: BLE001 - any failure: the session, and the lock with it, is gone
            held = False
        with contextlib.suppress(Exception):  # a lost connection: the server has freed the lock already
            handle.close()
        return held

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(url: str) -> Path | None:
    """The study lock's file: ``<file>.lock`` beside a SQLite file, ``<file>.study-lock`` beside a journal file
    (whose own writes take ``<file>.lock``)."""
    path = file_path(url)
    if path is None:
        return None
    return path.with_name(path.name + (".study-lock" if journal_path(url) else ".lock"))


@functools.cache
def _lock_engine(url: str) -> Any:
    import sqlalchemy

    # One connection per lock, closed when the lock is released: closing it frees the lock on the server.
    return sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT",
                                    connect_args={"connect_timeout": CONNECT_TIMEOUT})


def _advisory_lock(url: str) -> Any:
    """A new connection holding the study's advisory lock (waits while another session holds it)."""
    import sqlalchemy

    conn = _lock_engine(url).connect()
    try:
        # The server notices a holder whose machine vanished after about a minute, not the system's 2 hours.
        conn.execute(sqlalchemy.text("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                                     "SET tcp_keepalives_count = 3"))
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
        raise
    return conn


@contextlib.contextmanager
def removed_on_error(url: str):
    """Remove a SQLite or journal study file (and its lock file and empty folders) created inside the block if
    the block raises: an early error leaves nothing behind."""
    path = file_path(url)
    new_file = path is not None and not path.exists()
    lock = lock_path(url)
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
