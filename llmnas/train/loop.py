"""Budgeted training of one architecture, Accelerate-native.

One :class:`accelerate.Accelerator` drives everything (``prepare``, ``backward``, gradient
accumulation, mixed precision), so the same loop runs under ``python``, ``accelerate launch`` (DDP)
and DeepSpeed. The budget is tokens, optimizer steps or seconds; the learning rate follows nanoGPT's
schedule (linear warm-up, cosine decay to ``min_lr``).

Example:
    >>> from accelerate import Accelerator
    >>> result = train(arch, data, TrainConfig(max_steps=200), Accelerator())  # doctest: +SKIP
    >>> result.val_loss, result.bits_per_byte  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, set_seed
from torch.utils.data import DataLoader, Subset

from llmnas import interrupt
from llmnas.data import EvalBlocks, RandomBlocks, TokenData
from llmnas.errors import LlmnasError, RecipeError
from llmnas.models.decoder import Decoder
from llmnas.space.arch import Architecture
from llmnas.train.ranks import from_main, main_decides, mean_loss_or_failure, run_guarded

PRECISIONS = ("auto", "no", "bf16", "fp16")

#: Called with (optimizer step, intermediate validation loss); returns True to stop (prune) the run.
Reporter = Callable[[int, float], bool]


class TrainingDiverged(LlmnasError):
    """The loss became NaN or infinite; ``step`` and ``loss`` say where."""

    def __init__(self, step: int, loss: float) -> None:
        self.step, self.loss = step, loss
        super().__init__(f"training diverged: loss {loss} at step {step}")


class TrainingPruned(Exception):
    """The reporter asked to stop early (an Optuna pruner said so)."""

    def __init__(self, step: int, val_loss: float, message: str | None = None) -> None:
        self.step, self.val_loss = step, val_loss
        super().__init__(message or f"pruned at step {step} (validation loss {val_loss:.4f})")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How one architecture is trained. Exactly the budget fields that are set count; the first reached stops."""

    batch_size: int = 12
    """Sequences per micro-batch on each process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (``accelerator.accumulate``)."""
    max_steps: int | None = None
    """Budget in optimizer steps."""
    max_tokens: int | None = None
    """Budget in training tokens, over all processes (converted to whole steps)."""
    max_seconds: float | None = None
    """Budget in wall-clock seconds of training (evaluations excluded); the LR schedule follows elapsed time."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Linear warm-up steps (nanoGPT's form: ``lr * (step + 1) / (warmup + 1)``)."""
    lr_decay_steps: int | None = None
    """Steps over which the cosine decays; default: the whole step budget."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices and embeddings (never on norm weights)."""
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (``None``: no clipping)."""
    dropout: float = 0.0
    seed: int = 1337
    """Seeds initialisation and the order of training windows."""
    eval_interval: int | None = None
    """Optimizer steps between intermediate validations (reported to the pruner); ``None``: only at the end."""
    eval_blocks: int | None = 256
    """Validation windows used by intermediate validations (an evenly spaced fixed subset); the final
    validation always uses the whole validation split. ``None``: whole split every time."""
    eval_batch_size: int = 32
    log_interval: int = 0
    """Print the training loss every this many steps on the main process (0: silent)."""
    mixed_precision: str = "auto"
    """``auto`` (bf16 autocast on a GPU that has it, unless ``accelerate launch`` says otherwise; fp32 on
    CPU), ``no``, ``bf16`` or ``fp16``."""

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_tokens is None and self.max_seconds is None:
            raise RecipeError("train: give a budget: max_steps, max_tokens or max_seconds")
        for name in ("max_steps", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RecipeError(f"train.{name}={value!r}: must be a positive integer or null")
        seconds = self.max_seconds
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf
        ):
            raise RecipeError(f"train.max_seconds={seconds!r}: must be a positive number of seconds or null")
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"train.{name}={value!r}: must be a positive integer")
        for name in ("warmup_steps", "lr_decay_steps", "eval_interval", "eval_blocks"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise RecipeError(f"train.{name}={value!r}: must be a non-negative integer or null")
        if not (0 < self.lr < math.inf and 0 <= self.min_lr <= self.lr):
            raise RecipeError(
                f"train.lr={self.lr!r}, train.min_lr={self.min_lr!r}: need 0 < lr (finite) and 0 <= min_lr <= lr"
            )
        if not 0 <= self.dropout < 1:
            raise RecipeError(f"train.dropout={self.dropout}: must be in [0, 1)")
        if not 0 <= self.weight_decay < math.inf:
            raise RecipeError(f"train.weight_decay={self.weight_decay}: must be a non-negative number")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise RecipeError(f"train.{name}={getattr(self, name)}: must be in [0, 1)")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise RecipeError(f"train.grad_clip={self.grad_clip}: must be a positive number, or null for no clipping")
        if self.eval_blocks == 0:
            raise RecipeError("train.eval_blocks=0: must be a positive number of windows, or null for the whole split")
        if self.mixed_precision not in PRECISIONS:
            raise RecipeError(
                f"train.mixed_precision={self.mixed_precision!r}: must be one of {', '.join(PRECISIONS)}"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig(**{**asdict(self), **changes})


@dataclass
class TrainResult:
    """What one training run measured."""

    val_loss: float
    """Mean cross-entropy on the whole validation split, nats per token."""
    bits_per_byte: float | None
    bits_per_char: float | None
    train_loss: float
    """Mean training loss over the last logged steps."""
    steps: int
    tokens: int
    """Training tokens seen, over all processes."""
    train_seconds: float
    eval_seconds: float
    tokens_per_second: float
    history: list[tuple[int, float]] = field(default_factory=list)
    """Intermediate validation losses as (step, loss)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator for ``cfg``: its gradient accumulation, and its mixed precision where the device has it."""
    precision: str | None = cfg.mixed_precision
    if precision == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):
            precision = None  # accelerate launch's configuration decides
        elif torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            precision = "bf16"
        else:
            precision = "no"
    handlers = []
    if _deepspeed_without_gpu():
        # accelerate picks no backend when DeepSpeed runs on CPUs: it then counts one process while
        # torch.distributed has several, so no rank gets its own shard of the data and DeepSpeed's batch
        # check fails. gloo is the backend DeepSpeed's CPU accelerator uses anyway.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=precision,
                       kwargs_handlers=handlers)


def _deepspeed_without_gpu() -> bool:
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return launched and deepspeed and not torch.cuda.is_available()


def lr_at(cfg: TrainConfig, step: int, total_steps: int | None, progress: float | None = None) -> float:
    """nanoGPT's schedule; with a time budget, ``progress`` (elapsed / budget) places the cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if progress is None:
        decay = cfg.lr_decay_steps or total_steps or 1
        if step > decay:
            return cfg.min_lr
        ratio = (step - cfg.warmup_steps) / max(1, decay - cfg.warmup_steps)
    else:
        ratio = min(1.0, progress)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on tensors of rank >= 2 only (nanoGPT's grouping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (CPU and CUDA) takes ~8% off a small model's step on 2 CPU cores.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def total_steps(cfg: TrainConfig, block_size: int, world_size: int) -> int | None:
    """Optimizer steps the step/token budget allows (``None`` when only a time budget is set)."""
    steps = []
    if cfg.max_steps is not None:
        steps.append(cfg.max_steps)
    if cfg.max_tokens is not None:
        per_step = cfg.batch_size * cfg.grad_accum * block_size * world_size
        steps.append(max(1, math.ceil(cfg.max_tokens / per_step)))
    return min(steps) if steps else None


def _batch_sums(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed cross-entropy and number of predicted tokens: ``(batch, 2)``."""
    interrupt.check()
    logits = model(x).logits.float()
    losses = torch.nn.functional.cross_entropy(
        logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100, reduction="none"
    ).view(y.shape)
    return torch.stack([losses.sum(1).double(), (y != -100).sum(1).double()], 1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator) -> tuple[float, int]:
    """Summed cross-entropy (nats) and number of predicted tokens over ``loader``, all processes together."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    for x, y in loader:
        sums = run_guarded(accelerator, _batch_sums, model, x, y)  # a failed forward must not strand the others
        # gather_for_metrics drops the samples accelerate repeats to even out the last batch.
        per_sample = accelerator.gather_for_metrics(sums)
        total += per_sample[:, 0].sum()
        count += per_sample[:, 1].sum().long()
    model.train()
    return float(total), int(count)


@dataclass
class _Loaders:
    train: DataLoader
    full_val: DataLoader
    quick_val: DataLoader


def validation_loaders(data: TokenData, cfg: TrainConfig, block: int) -> tuple[DataLoader, DataLoader]:
    """The whole validation split, and the ``cfg.eval_blocks`` evenly spaced windows of it used by
    intermediate validations (the same loader when the split is not larger)."""
    val_ds = EvalBlocks(data.val, block)
    full_val = DataLoader(val_ds, batch_size=cfg.eval_batch_size)
    quick_val = full_val
    if cfg.eval_blocks is not None and cfg.eval_blocks < len(val_ds):
        picks = np.linspace(0, len(val_ds) - 1, cfg.eval_blocks).round().astype(int).tolist()
        quick_val = DataLoader(Subset(val_ds, picks), batch_size=cfg.eval_batch_size)
    return full_val, quick_val


def training_loader(data: TokenData, cfg: TrainConfig, block: int, steps_budget: int | None, world: int) -> DataLoader:
    """Random training windows for the whole budget (item ``i`` depends on ``(cfg.seed, i)`` only)."""
    micro_batches = (steps_budget or 10**9) * cfg.grad_accum * world
    train_ds = RandomBlocks(data.train, block, num_samples=micro_batches * cfg.batch_size, seed=cfg.seed)
    return DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=False)


def _loaders(data: TokenData, cfg: TrainConfig, block: int, steps_budget: int | None, world: int) -> _Loaders:
    return _Loaders(training_loader(data, cfg, block, steps_budget, world), *validation_loaders(data, cfg, block))


def train(
    arch: Architecture,
    data: TokenData,
    cfg: TrainConfig,
    accelerator: Accelerator,
    *,
    report: Reporter | None = None,
    model: Decoder | None = None,
) -> tuple[Decoder, TrainResult]:
    """Train ``arch`` from scratch on ``data`` within ``cfg``'s budget; return the model and the metrics.

    Under ``accelerate launch`` every process calls this with the same arguments; they agree on every
    decision (see :mod:`llmnas.train.ranks`), so they end together, also when one of them fails.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (the run is lost, the caller goes on).
        TrainingPruned: ``report`` asked to stop.
        TrainingFailed: another process raised (this process raises its own exception when it is the one).
    """
    check_accelerator(accelerator, cfg)
    block = arch.max_seq_len
    world = accelerator.num_processes
    steps_budget = total_steps(cfg, block, world)

    def build() -> tuple[Decoder, torch.optim.Optimizer, _Loaders]:
        set_seed(cfg.seed)
        net = model if model is not None else Decoder(arch, dropout=cfg.dropout)
        return net, make_optimizer(net, cfg), _loaders(data, cfg, block, steps_budget, world)

    net, optimizer, loaders = run_guarded(accelerator, build)
    net, optimizer, train_loader, full_val, quick_val = accelerator.prepare(
        net, optimizer, loaders.train, loaders.full_val, loaders.quick_val
    )
    net.train()
    history: list[tuple[int, float]] = []
    step, tokens, recent = 0, 0, []
    train_seconds = eval_seconds = 0.0
    tokens_per_micro = cfg.batch_size * block * world
    started = time.perf_counter()
    batches = iter(train_loader)
    try:
        while True:
            # The main process's clock places the schedule and ends a time budget on every process:
            # replicas with different learning rates would drift apart (DDP never re-syncs weights).
            progress = from_main(train_seconds / cfg.max_seconds, accelerator) if cfg.max_seconds else None
            if (steps_budget is not None and step >= steps_budget) or (progress is not None and progress >= 1.0):
                break
            lr = lr_at(cfg, step, steps_budget, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for _ in range(cfg.grad_accum):
                value = _micro_step(net, optimizer, batches, cfg, accelerator, step)
                tokens += tokens_per_micro
            step += 1
            recent = (recent + [value])[-20:]
            if cfg.log_interval and step % cfg.log_interval == 0:
                accelerator.print(f"step {step}: loss {value:.4f}, lr {lr:.2e}")
            now = time.perf_counter()
            train_seconds = now - started - eval_seconds
            if cfg.eval_interval and step % cfg.eval_interval == 0 and step != steps_budget:
                loss_sum, n = evaluate(net, quick_val, accelerator)
                val = loss_sum / n
                eval_seconds += time.perf_counter() - now
                if not math.isfinite(val):
                    raise TrainingDiverged(step, val)
                history.append((step, val))
                if report is not None:
                    prune = bool(run_guarded(accelerator, report, step, val))
                    if main_decides(prune, accelerator):
                        raise TrainingPruned(step, val)
        t0 = time.perf_counter()
        loss_sum, n = evaluate(net, full_val, accelerator)
        eval_seconds += time.perf_counter() - t0
        val_loss = loss_sum / n
        if not math.isfinite(val_loss):
            raise TrainingDiverged(step, val_loss)
        history.append((step, val_loss))
        bits = loss_sum / math.log(2)
        result = TrainResult(
            val_loss=val_loss,
            bits_per_byte=bits / data.meta.val_bytes if data.meta.val_bytes else None,
            bits_per_char=bits / data.meta.val_chars if data.meta.val_chars else None,
            train_loss=float(np.mean(recent)) if recent else float("nan"),
            steps=step,
            tokens=tokens,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            tokens_per_second=tokens / max(train_seconds, 1e-9),
            history=history,
        )
        return accelerator.unwrap_model(net), result
    finally:
        accelerator.free_memory()


def _micro_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Any, cfg: TrainConfig,
                accelerator: Accelerator, step: int) -> float:
    """One micro-batch: forward, agreement on the loss (and on any failure), backward, optimizer step."""
    with accelerator.accumulate(net):
        loss, error = None, None
        try:
            interrupt.check()  # Ctrl-C stops every process at the same step
            x, y = next(batches)
            loss = net(x, targets=y).loss
        except (Exception, KeyboardInterrupt) as e:  # announced to the other processes before the backward pass
            error = e
        return agreed_update(net, optimizer, loss, error, cfg, accelerator, step)


def agreed_update(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor | None,
                  error: BaseException | None, cfg: TrainConfig, accelerator: Accelerator, step: int) -> float:
    """After a micro-batch's forward: agree on the loss and on any failure, then backward, clip and step.

    Call it inside ``accelerator.accumulate``; returns the loss averaged over processes.
    """
    value = mean_loss_or_failure(loss, error, accelerator)
    if not math.isfinite(value):  # every process sees the same mean, so every process stops here
        raise TrainingDiverged(step + 1, value)
    accelerator.backward(loss)
    if accelerator.sync_gradients and cfg.grad_clip:
        accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def check_accelerator(accelerator: Accelerator, cfg: TrainConfig) -> None:
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise ValueError(
            f"the Accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches but train.grad_accum "
            f"is {cfg.grad_accum}: build it with Accelerator(gradient_accumulation_steps={cfg.grad_accum})"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed clips inside its own step with its config's value; accelerate's clip call does nothing.
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        clip = ds.get("gradient_clipping")
        if clip not in (None, "auto") and float(clip or 0.0) != float(cfg.grad_clip or 0.0):
            raise RecipeError(
                f"train.grad_clip={cfg.grad_clip} but the DeepSpeed config clips at gradient_clipping={clip}: "
                "set them equal (the accelerate config's deepspeed_config.gradient_clipping)"
            )
