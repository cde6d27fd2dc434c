"""Token cache: tokenised splits on disk, keyed by what they were made from.

An entry is a folder ``<cache_dir>/<key>/`` with ``train.npy``, ``val.npy`` and ``meta.json``. The
key hashes the corpus content hash, the tokenizer and the split settings, so a changed corpus or
tokenizer never reads a stale entry. An entry is written into a temporary folder beside it and
renamed into place in one step, so two processes that tokenise the same data at once both succeed
and readers never see a half-written entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "LLMNAS_CACHE"


def default_cache_dir() -> Path:
    """``$LLMNAS_CACHE/tokens`` when the variable is set, else ``~/.cache/llmnas/tokens``."""
    root = os.environ.get(ENV_VAR)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "llmnas") / "tokens"


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of ``parts`` (a JSON-able dict)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def load_entry(cache_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """The cached ``(train, val, meta)`` for ``key``, or ``None`` when absent or unreadable."""
    entry = cache_dir / key
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        train = np.load(entry / "train.npy", allow_pickle=False)
        val = np.load(entry / "val.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return train, val, meta


def save_entry(cache_dir: Path, key: str, train: np.ndarray, val: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write an entry atomically; if another process wrote the same key first, keep theirs."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = cache_dir / key
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        np.save(tmp / "train.npy", train, allow_pickle=False)
        np.save(tmp / "val.npy", val, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        if entry.exists() and load_entry(cache_dir, key) is None:
            # an unreadable entry (e.g. a crash with a pre-atomic writer): move it aside, then drop it
            stale = cache_dir / f".stale-{key}-{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(OSError):  # another process may have moved it first
                os.rename(entry, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
