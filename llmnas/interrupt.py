"""Ctrl-C that stops a search cleanly, at the next training step.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives. During a
training step that is often inside a garbage-collection callback (SQLAlchemy's, the weak-reference
machinery's), where the exception is printed as "Exception ignored" and dropped, so the search goes on;
or inside a lazy import run through ``exec``, after which CPython ends the process with SIGINT whatever
the program returns. So the command line installs :func:`install`: the first Ctrl-C only records the
request, and :func:`check` raises ``KeyboardInterrupt`` at the next point that asks (every training
step, every evaluation batch, before each trial); a second Ctrl-C raises at once.

A program that uses llmnas as a library and installs nothing keeps Python's default behaviour
(:func:`check` then never raises).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from types import FrameType

_requested = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True
    print("llmnas: stopping at the next training step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


def install() -> None:
    """Handle SIGINT with a request that :func:`check` raises (main thread only; elsewhere nothing changes)."""
    global _requested
    _requested = False
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed."""
    if _requested:
        raise KeyboardInterrupt
