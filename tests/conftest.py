"""Shared test helpers.

Tests that read real data from ``../shared/data`` call :func:`shared_data`. On a user's clone the
folder is absent and those tests skip with the reason; under CI (``CI=true``) a missing folder is a
failure, not a skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLMNAS_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(relative: str) -> Path:
    """Path of a file under ``../shared/data``; skips (or fails under CI) when it is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        reason = f"real data not found: {path} (set LLMNAS_SHARED_DATA to the shared data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run_group(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a new process group that is killed whole on timeout (a launcher's workers too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (processes stuck?)\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
