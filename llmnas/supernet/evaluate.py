"""Scoring subnets with inherited weights."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from llmnas.data import TokenData
from llmnas.models.decoder import DecoderOutput
from llmnas.space.arch import Architecture
from llmnas.train.loop import TrainConfig, evaluate, train, validation_loaders


class SubnetView(nn.Module):
    """One architecture of a supernet, called like a :class:`~llmnas.models.decoder.Decoder`:
    ``view(idx, targets=None)``. It holds no weights of its own (the supernet's are shared)."""

    def __init__(self, net: nn.Module, arch: Architecture) -> None:
        super().__init__()
        self.net, self.arch = net, arch

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> DecoderOutput:
        return self.net(idx, self.arch, targets)


_LOADERS: dict[tuple, Any] = {}


def _loader(data: TokenData, cfg: TrainConfig, block: int, accelerator: Accelerator, whole: bool) -> Any:
    """The prepared validation loader, built once per data set and settings: a search scores thousands of
    subnets, and accelerate keeps a reference to every loader it prepares."""
    key = (id(accelerator), id(data.val), block, cfg.eval_blocks, cfg.eval_batch_size, whole)
    if key not in _LOADERS:
        if len(_LOADERS) > 8:
            _LOADERS.clear()
        full, quick = validation_loaders(data, cfg, block)
        _LOADERS[key] = (accelerator.prepare(full if whole else quick), data.val, accelerator)  # keep ids alive
    return _LOADERS[key][0]


@dataclass
class SubnetScore:
    """Validation of one subnet with inherited weights."""

    val_loss: float
    """Mean cross-entropy, nats per token, over the evaluated windows."""
    bits_per_byte: float | None
    bits_per_char: float | None
    windows: int
    """Validation windows evaluated (``eval_blocks`` evenly spaced ones, or the whole split)."""
    eval_seconds: float
    finetune_steps: int = 0
    """Training steps from the inherited weights before scoring (:func:`finetune_subnet`)."""
    finetune_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_subnet(
    supernet: nn.Module,
    arch: Architecture,
    data: TokenData,
    cfg: TrainConfig,
    accelerator: Accelerator,
    *,
    whole_split: bool = False,
) -> SubnetScore:
    """Validation loss of ``arch`` with the supernet's weights, on ``cfg.eval_blocks`` evenly spaced
    windows of the validation split (the windows a from-scratch trial's intermediate validations use), or
    on the whole split with ``whole_split``. Every process calls it; the windows are split among them."""
    supernet.check(arch)  # type: ignore[operator]
    loader = _loader(data, cfg, arch.max_seq_len, accelerator, whole_split)
    t0 = time.perf_counter()
    loss_sum, n = evaluate(SubnetView(supernet, arch), loader, accelerator)
    seconds = time.perf_counter() - t0
    bits = loss_sum / math.log(2)
    # bytes and characters of the evaluated windows, in proportion to their tokens
    share = n / max(1, len(data.val) - 1)
    meta = data.meta
    return SubnetScore(
        val_loss=loss_sum / n,
        bits_per_byte=bits / (meta.val_bytes * share) if meta.val_bytes else None,
        bits_per_char=bits / (meta.val_chars * share) if meta.val_chars else None,
        windows=len(loader.dataset),
        eval_seconds=seconds,
    )


def finetune_config(cfg: TrainConfig, steps: int, lr: float | None = None) -> TrainConfig:
    """``cfg`` for ``steps`` of fine-tuning inherited weights: a fresh AdamW, linear warm-up over the first
    tenth, cosine to a tenth of the peak ``lr`` (default ``cfg.lr``) over the ``steps``; only the final
    validation (the whole split)."""
    peak = cfg.lr if lr is None else lr
    return cfg.replace(max_steps=steps, max_tokens=None, max_seconds=None, lr_decay_steps=None, eval_interval=None,
                       lr=peak, min_lr=peak / 10, warmup_steps=max(1, steps // 10), log_interval=0)


def finetune_subnet(
    supernet: nn.Module,
    arch: Architecture,
    data: TokenData,
    cfg: TrainConfig,
    accelerator: Accelerator,
    steps: int,
    lr: float | None = None,
) -> SubnetScore:
    """Validation loss of ``arch`` on the whole validation split after ``steps`` of training that start from
    the weights it inherits (a copy: the supernet is unchanged), with :func:`finetune_config`'s schedule.
    Costs ``steps`` training steps per architecture and ranks architectures more like training from scratch
    does than inherited weights alone (``eval/supernet/run.py --stages finetune``)."""
    supernet.check(arch)  # type: ignore[operator]
    model = supernet.extract(arch)  # type: ignore[operator]
    full, _ = validation_loaders(data, cfg, arch.max_seq_len)
    _, result = train(arch, data, finetune_config(cfg, steps, lr), accelerator, model=model)
    return SubnetScore(val_loss=result.val_loss, bits_per_byte=result.bits_per_byte,
                       bits_per_char=result.bits_per_char, windows=len(full.dataset), eval_seconds=result.eval_seconds,
                       finetune_steps=result.steps, finetune_seconds=result.train_seconds)
