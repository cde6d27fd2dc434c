"""Supernet checkpoints: weights, the space they cover, and the state to resume training.

A supernet folder (``supernet.out``, default ``runs/<study>/supernet``)::

    latest                       the name of the newest complete checkpoint (replaced atomically)
    checkpoint-<step>/
        supernet.safetensors     the SuperNet's weights
        supernet.json            format, space, constraints, step, budget, recipe record, losses
        state/                   accelerate's save_state (optimizer, also DeepSpeed's) to resume
        tokenizer/               the tokenizer, for export

A checkpoint is written completely before ``latest`` names it, so a run killed while writing leaves the
previous one in force.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmnas.export.checkpoint import CheckpointError
from llmnas.supernet.dims import space_from_record
from llmnas.supernet.model import SuperNet

FORMAT = "llmnas.supernet/1"
LATEST = "latest"
WEIGHTS = "supernet.safetensors"
META = "supernet.json"
STATE = "state"
TOKENIZER = "tokenizer"


@dataclass
class SupernetCheckpoint:
    """A loaded supernet: the module, its record, the checkpoint folder, and a content id of the weights."""

    net: SuperNet
    meta: dict[str, Any]
    path: Path
    id: str

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / f"checkpoint-{step}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint under a supernet folder (``None`` when none was finished)."""
    out = Path(out)
    pointer = out / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = out / name
    if not name.startswith("checkpoint-") or not (path / META).is_file():
        raise CheckpointError(f"{pointer}: names {name!r}, which is not a complete checkpoint in {out}")
    return path


def write_weights(net: SuperNet, path: Path, meta: dict[str, Any]) -> None:
    """Weights and record into ``path`` (a new checkpoint folder; main process only)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path / WEIGHTS), metadata={"format": FORMAT, "step": str(meta["step"])})
    (path / META).write_text(json.dumps({"format": FORMAT, **meta}, indent=1, default=str) + "\n")


def publish(out: Path, path: Path, keep: int = 1) -> None:
    """Point ``latest`` at ``path`` (atomically) and remove older checkpoints beyond the newest ``keep``."""
    tmp = out / f".{LATEST}.tmp"
    tmp.write_text(path.name + "\n")
    os.replace(tmp, out / LATEST)
    done = sorted((p for p in out.glob("checkpoint-*") if p.is_dir()), key=_step_of)
    for old in done[:-keep]:
        if old != path:
            shutil.rmtree(old, ignore_errors=True)


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except ValueError:
        return -1


def weights_id(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {META}: not a supernet checkpoint") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / META}: unreadable ({e}): the checkpoint is corrupted or partial") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / META}: not a {FORMAT} record (format {meta.get('format')!r})")
    return meta


def load_supernet(location: str | Path, device: str | torch.device = "cpu") -> SupernetCheckpoint:
    """Load a supernet from its folder (its ``latest`` checkpoint) or from one ``checkpoint-<step>`` folder.

    Raises:
        CheckpointError: nothing there, a partial or corrupted checkpoint, or weights that do not match
            the space recorded beside them.
    """
    location = Path(location)
    if not location.exists():
        raise CheckpointError(f"{location}: no such supernet folder (train one with: llmnas supernet train RECIPE)")
    path = location if (location / META).exists() else latest_checkpoint(location)
    if path is None:
        raise CheckpointError(
            f"{location}: no finished supernet checkpoint (no {LATEST} file and no {META}); was its training "
            "killed before the first checkpoint?"
        )
    meta = read_meta(path)
    try:
        state = load_file(str(path / WEIGHTS), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {WEIGHTS}: the checkpoint is partial") from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / WEIGHTS}: unreadable ({e}): the checkpoint is corrupted or partial") from None
    space = space_from_record(meta["space"], meta.get("constraints"), source=str(path / META))
    net = SuperNet(space).to(device)
    expected = net.state_dict()
    wrong = sorted(set(expected) ^ set(state)) or [
        k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{path / WEIGHTS}: its weights do not fit the space recorded in {META} (first mismatch: {wrong[0]}); "
            "the checkpoint is corrupted or comes from another space"
        )
    net.load_state_dict(state)
    net.eval()
    return SupernetCheckpoint(net=net, meta=meta, path=path, id=weights_id(path / WEIGHTS))
