"""Shared test helpers.

Tests that read real data from ``../shared/data`` call :func:`shared_data`. On a user's clone the
folder is absent and those tests skip with the reason; under CI (``CI=true``) a missing folder is a
failure, not a skip.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: A two-width, two-depth transformer space: searches over it train in seconds (evaluator and supernet tests).
MICRO_SPACE = """\
name: micro
vocab_size: 257
max_seq_len: 32
d_model: [32, 48]
n_layers: [1, 2]
pos: [rope, learned]
layer:
  n_heads: [2, 4]
  attention: [full, sliding]
  window: [8]
  activation: [gelu, swiglu]
  ffn_mult: [2]
"""
DEEPSPEED_CONFIG = REPO / "recipes" / "accelerate" / "cpu_deepspeed_zero2.yaml"  # the shipped one
SHARED_DATA = Path(os.environ.get("LLMNAS_SHARED_DATA", REPO.parent / "shared" / "data"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist: the workers share the cores, one torch thread each
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and for the processes the tests start
    torch.set_num_threads(1)


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


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launcher(mode: str) -> tuple[list[str], dict[str, str]]:
    """``accelerate launch`` on two CPU processes, and the environment it needs: ``ddp`` (gloo) or ``deepspeed``
    (ZeRO-2 with the shipped CPU config, which must run without ACCELERATE_USE_CPU). Each launch rendezvouses on
    its own free port: accelerate's default, 29500, may still be held by an earlier launch's store."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    if mode == "ddp":
        env["ACCELERATE_USE_CPU"] = "1"
        launcher += ["--multi_gpu", "--num_processes", "2"]
    else:
        env.pop("ACCELERATE_USE_CPU", None)
        launcher += ["--config_file", str(DEEPSPEED_CONFIG)]
    return launcher, env


def launch_two_processes(mode: str, script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``script`` under :func:`accelerate_launcher`'s two processes."""
    launcher, env = accelerate_launcher(mode)
    return run_group([*launcher, str(script), *args], cwd=REPO, env=env, timeout=timeout)
