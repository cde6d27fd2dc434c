"""Training checkpoints: the architecture, the Decoder weights and optionally the tokenizer.

A checkpoint is a directory::

    arch.json           Architecture.save
    model.safetensors   the Decoder state dict (safetensors.torch)
    tokenizer/          optional, a tokenizer saved with save_pretrained

The training loop writes it with :func:`save_checkpoint`; ``llmnas export --weights`` reads it with
:func:`load_checkpoint` (or a bare ``.safetensors`` file of a Decoder state dict with
:func:`load_weights`).

Example:
    >>> save_checkpoint(model, "runs/t0/ckpt", tokenizer=tok)  # doctest: +SKIP
    >>> arch, state_dict, tok = load_checkpoint("runs/t0/ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmnas.errors import ArchitectureError, DataError, LlmnasError
from llmnas.space.arch import Architecture

if TYPE_CHECKING:
    from torch import nn

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


class CheckpointError(LlmnasError, ValueError):
    """A checkpoint is missing, unreadable, or does not match its architecture."""


def save_checkpoint(model: nn.Module, directory: str | Path, tokenizer: Any | None = None) -> Path:
    """Write ``model`` (a :class:`~llmnas.models.decoder.Decoder`, possibly ``torch.compile``-d or wrapped
    in DDP) and optionally its tokenizer to ``directory``; returns the directory."""
    directory = Path(directory)
    inner = _unwrap(model)
    arch = getattr(inner, "arch", None)
    if not isinstance(arch, Architecture):
        raise TypeError(f"expected an llmnas Decoder (with .arch), got {type(model).__name__}")
    directory.mkdir(parents=True, exist_ok=True)
    arch.save(directory / ARCH_FILE)
    state = {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "arch_id": arch.id})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
    return directory


def load_checkpoint(
    directory: str | Path, *, with_tokenizer: bool = True
) -> tuple[Architecture, dict[str, torch.Tensor], Any | None]:
    """Read a checkpoint directory: ``(arch, state_dict, tokenizer or None)``.

    ``with_tokenizer=False`` leaves the checkpoint's tokenizer unread (``None``), e.g. when another is given.

    Raises:
        CheckpointError: the directory or one of its files (architecture, weights, tokenizer) is missing
            or unreadable, or the weights do not fit the architecture.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    arch_path = directory / ARCH_FILE
    if not arch_path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {ARCH_FILE})")
    try:
        arch = Architecture.load(arch_path)
    except ArchitectureError as e:
        raise CheckpointError(str(e)) from None
    state_dict = read_state_dict(directory / WEIGHTS_FILE)
    check_state_dict(arch, state_dict, str(directory / WEIGHTS_FILE))
    tokenizer = None
    if with_tokenizer and (directory / TOKENIZER_DIR).is_dir():
        from llmnas.data.tokenizers import hf_tokenizer

        try:
            tokenizer = hf_tokenizer(str(directory / TOKENIZER_DIR), local_files_only=True)
        except DataError as e:
            raise CheckpointError(f"{e}; give another tokenizer with --tokenizer") from None
    return arch, state_dict, tokenizer


def load_weights(
    path: str | Path, arch: Architecture, *, with_tokenizer: bool = True
) -> tuple[dict[str, torch.Tensor], Any | None]:
    """Decoder weights for ``arch`` from a checkpoint directory or a bare ``.safetensors`` file.

    Returns ``(state_dict, tokenizer or None)``; ``with_tokenizer=False`` leaves a checkpoint's tokenizer
    unread. A checkpoint directory must have been written for the same architecture (same id): equal
    shapes are not enough, since e.g. the window or the positional scheme changes the maths but no shape.
    """
    path = Path(path)
    if path.is_dir():
        ckpt_arch, state_dict, tokenizer = load_checkpoint(path, with_tokenizer=with_tokenizer)
        if ckpt_arch.id != arch.id:
            raise CheckpointError(
                f"checkpoint {path} holds architecture {ckpt_arch.id}, not {arch.id}: "
                f"export {path / ARCH_FILE} instead, or pass the weights of this architecture"
            )
        return state_dict, tokenizer
    state_dict = read_state_dict(path)
    check_state_dict(arch, state_dict, str(path))
    return state_dict, None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def check_state_dict(arch: Architecture, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing the keys and shapes that differ from ``Decoder(arch)``."""
    from llmnas.models.decoder import Decoder

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Decoder(arch).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = [f"missing {k} {expected[k]}" for k in expected if k not in got]
    problems += [f"unexpected {k} {got[k]}" for k in got if k not in expected]
    problems += [
        f"{k}: shape {got[k]} in the weights, {expected[k]} in the architecture"
        for k in expected
        if k in got and got[k] != expected[k]
    ]
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        head = f"{source}: weights do not match architecture {arch.id} ({len(problems)} problems)"
        raise CheckpointError(f"{head}:\n{shown}{more}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` (``_orig_mod``) and DDP/FSDP-style (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
