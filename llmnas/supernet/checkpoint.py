"""Supernet checkpoints: weights, the space they cover, and the state to resume training.

A supernet folder (``supernet.out``, default ``runs/<study>/supernet``)::

    latest                       the name of the newest complete checkpoint (replaced atomically)
    checkpoint-<step>/
        supernet.safetensors     the SuperNet's weights
        supernet.json            format, space, constraints, step, budget, recipe record, losses
        state/                   accelerate's save_state (optimizer, also DeepSpeed's) to resume
        tokenizer/               the tokenizer, for export

A checkpoint is written completely before ``latest`` names it, so a run killed while writing leaves the
previous one in force. A supernet split on one decision (``supernet.split``) is a folder of such folders, one
per value, with a ``split.json`` beside them (:mod:`llmnas.supernet.split`); :func:`load_supernet` loads it
whole.
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

from llmnas.errors import RecipeError
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
    tokenizer: Path | None = None
    """The tokenizer folder saved with the weights (default: ``path/tokenizer``)."""

    def __post_init__(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.path / TOKENIZER

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
    """A content id of a safetensors file: its header (keys sorted: safetensors writes the metadata in an order
    that changes between processes) and its tensor bytes. Equal weights give equal ids."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise CheckpointError(f"{path}: unreadable safetensors header: the checkpoint is corrupted") from None
        digest.update(json.dumps(header, sort_keys=True).encode())
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
    """Load a supernet from its folder (its ``latest`` checkpoint), from one ``checkpoint-<step>`` folder, or a
    split supernet from its folder (every part's ``latest``; its ``net`` is a
    :class:`~llmnas.supernet.split.SplitSuperNet`).

    Raises:
        CheckpointError: nothing there, a partial or corrupted checkpoint, or weights that do not match
            the space recorded beside them.
    """
    location = Path(location)
    if not location.exists():
        raise CheckpointError(f"{location}: no such supernet folder (train one with: llmnas supernet train RECIPE)")
    from llmnas.supernet.split import is_split

    if is_split(location):
        return _load_split(location, device)
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
    unshare = tuple((meta.get("config") or {}).get("unshare", ()))
    try:
        net = SuperNet(space, unshare=unshare).to(device)
    except RecipeError as e:
        raise CheckpointError(f"{path / META}: {e}; the checkpoint is corrupted") from None
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


def _load_split(location: Path, device: str | torch.device) -> SupernetCheckpoint:
    """A split supernet (:mod:`llmnas.supernet.split`): every part, finished, of one space and settings."""
    from llmnas.supernet.split import SplitSuperNet, by_part, read_manifest

    record = read_manifest(location)
    decision, parts = record["decision"], {}
    metas, ids = [], []
    for value in record["values"]:
        folder = location / record["parts"][str(value)]
        if not (folder / LATEST).is_file() and not (folder / META).is_file():
            raise CheckpointError(
                f"{folder}: part {decision}={value} of the split supernet {location} has no finished checkpoint; "
                "finish its training first (run the same llmnas supernet train command again)"
            )
        part = load_supernet(folder, device)
        if not part.meta.get("finished"):
            raise CheckpointError(
                f"{part.path}: part {decision}={value} of the split supernet {location} stopped at step "
                f"{part.meta['step']} of {part.meta.get('total_steps')}; run the same llmnas supernet train command "
                "again to finish it"
            )
        if metas and part.meta["space"] != metas[0]["space"]:
            raise CheckpointError(f"{part.path}: part {decision}={value} holds another space than the first part")
        parts[value] = part.net
        metas.append(part.meta)
        ids.append(part.id)
    first = metas[0]
    meta = {**first, "split": {"decision": decision, "values": record["values"],
                               "parts": {str(v): str(location / record["parts"][str(v)]) for v in record["values"]}},
            "tokens": sum(m["tokens"] for m in metas), "train_seconds": sum(m["train_seconds"] for m in metas),
            "losses": by_part(record["values"], [m["losses"] for m in metas]),
            "scores": by_part(record["values"], [m["scores"] for m in metas])}
    digest = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:12]
    tokenizer_from = location / record["parts"][str(record["values"][0])]
    return SupernetCheckpoint(net=SplitSuperNet(decision, parts).eval(), meta=meta, path=location, id=digest,
                              tokenizer=(latest_checkpoint(tokenizer_from) or tokenizer_from) / TOKENIZER)
