"""Fixtures of the search tests: a throw-away PostgreSQL server (``postgres``), a database per test (``pg_url``),
and the ``llmnas search`` processes a test starts (``STARTED``), killed when it ends."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.search.pg_server import pg_url, postgres  # noqa: F401 - fixtures

STARTED: list[subprocess.Popen] = []
"""Processes a test started (each in its own process group); appended by the tests' ``start_search``."""


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """A failed test must not leave searches running (their process groups are killed whole)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
