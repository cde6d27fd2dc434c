"""A throw-away PostgreSQL server for the tests: a cluster in a temporary folder on a free local port.

The server binaries are Debian's ``postgresql`` package (``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``; ``LLMNAS_PG_BINDIR`` overrides). ``initdb`` and ``postgres`` refuse to
run as root, so as root they run as the ``postgres`` system user the package creates. Without the
binaries or a driver the tests skip with the reason on a user's machine and fail under ``CI=true``
(``.ci/run`` installs both).

Use the ``pg_url`` fixture (a fresh database per test) or ``postgres`` (the server, session-wide).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

USER, PASSWORD = "llmnas", "llmnas-test"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_driver() -> None:
    """Skip (fail under CI) without the driver ``llmnas[postgres]`` installs."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("the PostgreSQL driver is not installed: pip install -e '.[postgres]'")


def pg_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, or ``None``."""
    candidates = []
    if os.environ.get("LLMNAS_PG_BINDIR"):
        candidates.append(Path(os.environ["LLMNAS_PG_BINDIR"]))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out:
            candidates.append(Path(out))

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


@dataclass
class PgServer:
    """A running cluster; ``url(db)`` is what a user types (password authentication over TCP)."""

    bindir: Path
    root: Path
    port: int
    as_user: list[str]  # the command prefix that runs a server binary as an unprivileged user

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str, user: str = USER, password: str = PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        cmd = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = (self.root / "server.log").read_text()[-3000:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr}\n{log}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                   "-c shared_buffers=16MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.pg_ctl("-l", str(self.root / "server.log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def execute(self, sql: str, db: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser (autocommit); its rows, if any."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url(db), isolation_level="AUTOCOMMIT",
                                          poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                result = conn.execute(sqlalchemy.text(sql))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_server() -> PgServer:
    bindir = pg_bindir()
    if bindir is None:
        _missing("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql, or set "
                 "LLMNAS_PG_BINDIR")
    require_driver()
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="llmnas-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    init = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER,
                           "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"], capture_output=True, text=True)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr[-3000:]}")
    server = PgServer(bindir, root, free_port(), as_user)
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres():
    server = start_server()
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: PgServer, request: pytest.FixtureRequest) -> str:
    """A new, empty database for this test."""
    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    return postgres.create_database(name)
