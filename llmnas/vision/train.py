"""Training a cell network on image data, Accelerate-native, sharing the transformer loop's parts.

The loop is :mod:`llmnas.train.loop`'s, for images: one :class:`accelerate.Accelerator` (``prepare``,
``backward``, accumulation), the same learning-rate schedule (:func:`~llmnas.train.loop.lr_at`: warm-up,
cosine to ``min_lr``; with a time budget the cosine follows elapsed time), the same agreed update
(:func:`~llmnas.train.loop.agreed_update`: every process agrees on the loss and on any failure, a NaN
stops the run with :class:`~llmnas.train.TrainingDiverged`), the same processes-in-step helpers.
What differs is the optimiser (NAS-Bench-201's SGD with Nesterov momentum and weight decay on every
tensor) and the data: in-memory uint8 images, augmented in torch per batch (:func:`llmnas.vision.data.augment`).

The budget is epochs of the training images, optimizer steps, or seconds; the first reached stops.
Throughput (training images per second, all processes together) is recorded.

Example:
    >>> data = load_images("../shared/data/images/cifar10_jpg.tar.gz")  # doctest: +SKIP
    >>> train_idx, valid_idx = nb201_split(data)  # doctest: +SKIP
    >>> cfg = VisionTrainConfig(C=8, N=1, epochs=1)  # doctest: +SKIP
    >>> accelerator = make_accelerator(cfg)  # doctest: +SKIP
    >>> model, result = train_cell(cell, data, train_idx, {"valid": valid_idx}, cfg, accelerator)  # doctest: +SKIP
    >>> result.accuracy["valid"], result.images_per_second  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset

from llmnas import interrupt
from llmnas.errors import RecipeError
from llmnas.space.nb201 import NB201Cell
from llmnas.train.loop import PRECISIONS, TrainingPruned, agreed_update, check_accelerator, lr_at, make_accelerator
from llmnas.train.ranks import from_main, main_decides, run_guarded
from llmnas.vision.data import ImageData, augment, normalise
from llmnas.vision.network import CellNetwork, nb201_network, resnet_network

__all__ = ["VisionTrainConfig", "VisionTrainResult", "build_network", "evaluate_accuracy", "make_accelerator",
           "train_cell", "train_network"]

#: ``network`` values besides an NAS-Bench-201 cell string.
RESNET = "resnet"

#: Called on the main process with (epochs completed, accuracy %, mean loss) of the first evaluation set at
#: every ``eval_every_epochs``; returns True to stop (prune) the run.
EpochReporter = Callable[[int, float, float], bool]


@dataclass(frozen=True, kw_only=True)
class VisionTrainConfig:
    """How one cell network is trained (NAS-Bench-201's protocol, budget aside, by default)."""

    C: int = 16
    """Channels of the first stage (NAS-Bench-201: 16)."""
    N: int = 5
    """Cells per stage (NAS-Bench-201: 5)."""
    batch_size: int = 256
    """Images per micro-batch on each process (NAS-Bench-201: 256)."""
    grad_accum: int = 1
    epochs: float | None = None
    """Budget in passes over the training images (fractions allowed; NAS-Bench-201: 200)."""
    max_steps: int | None = None
    """Budget in optimizer steps."""
    max_seconds: float | None = None
    """Budget in seconds of training (evaluation excluded); the cosine follows elapsed time."""
    train_images: int | None = None
    """Train on this many images of the training indices (a seeded class-stratified subset); ``None``: all."""
    lr: float = 0.1
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_decay_steps: int | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    """On every tensor, BatchNorm included, as NAS-Bench-201 does."""
    grad_clip: float | None = None
    augment: bool = True
    """Random crop (4-pixel zero padding) and horizontal flip on every training batch."""
    seed: int = 0
    """Seeds initialisation, the order of training images and the augmentation."""
    eval_batch_size: int = 500
    eval_every_epochs: int | None = None
    """Measure the first evaluation set every this many epochs (before the last) and pass the figures to the
    reporter, e.g. an Optuna pruner whose steps are then epochs; ``None``: only at the end."""
    log_interval: int = 0
    """Print the training loss every this many steps (0: silent)."""
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None and self.max_seconds is None:
            raise RecipeError("train: give a budget: epochs, max_steps or max_seconds")
        for name in ("C", "N", "batch_size", "grad_accum", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"train.{name}={value!r}: must be a positive integer")
        for name in ("max_steps", "train_images", "eval_every_epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RecipeError(f"train.{name}={value!r}: must be a positive integer or null")
        for name in ("epochs", "max_seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < math.inf):
                raise RecipeError(f"train.{name}={value!r}: must be a positive number or null")
        for name in ("warmup_steps", "lr_decay_steps", "log_interval"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise RecipeError(f"train.{name}={value!r}: must be a non-negative integer")
        if not (0 < self.lr < math.inf and 0 <= self.min_lr <= self.lr):
            raise RecipeError(f"train.lr={self.lr!r}, train.min_lr={self.min_lr!r}: need 0 < lr and 0 <= min_lr <= lr")
        if not 0 <= self.momentum < 1:
            raise RecipeError(f"train.momentum={self.momentum}: must be in [0, 1)")
        if not 0 <= self.weight_decay < math.inf:
            raise RecipeError(f"train.weight_decay={self.weight_decay}: must be a non-negative number")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise RecipeError(f"train.grad_clip={self.grad_clip}: must be a positive number, or null for no clipping")
        if self.mixed_precision not in PRECISIONS:
            raise RecipeError(f"train.mixed_precision={self.mixed_precision!r}: must be one of {', '.join(PRECISIONS)}")

    def replace(self, **changes: Any) -> VisionTrainConfig:
        return VisionTrainConfig(**{**asdict(self), **changes})


@dataclass
class VisionTrainResult:
    """What one training run measured."""

    accuracy: dict[str, float]
    """Top-1 accuracy (%) on each evaluation set, by name."""
    loss: dict[str, float]
    """Mean cross-entropy on each evaluation set."""
    train_loss: float
    """Mean training loss over the last 20 steps."""
    train_accuracy: float
    """Training accuracy (%, augmented batches) over the last 20 steps."""
    steps: int
    images: int
    """Training images seen, all processes together."""
    train_images: int
    train_seconds: float
    eval_seconds: float
    images_per_second: float
    """Training throughput, all processes together."""
    params: int
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(epochs completed, accuracy %, loss) of the first evaluation set at each ``eval_every_epochs``, and at
    the end when the run trained whole epochs."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_network(network: NB201Cell | str, cfg: VisionTrainConfig, data: ImageData) -> CellNetwork:
    """The network of an NAS-Bench-201 cell (or its string), or ``"resnet"`` for NAS-Bench-201's ResNet."""
    if network == RESNET:
        return resnet_network(cfg.C, cfg.N, data.num_classes, data.channels)
    return nb201_network(network, cfg.C, cfg.N, data.num_classes, data.channels)


def stratified_subset(indices: torch.Tensor, labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """``n`` of ``indices``, classes in proportion (a seeded choice), sorted; all when ``n`` is None or larger."""
    if n is None or n >= len(indices):
        return indices
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(indices), generator=gen)
    shuffled, classes = indices[perm], labels[perm]
    rank = torch.zeros(len(shuffled), dtype=torch.long)  # position of each index within its class
    for c in classes.unique():
        where = classes == c
        rank[where] = torch.arange(int(where.sum()))
    # interleave the classes: every class's k-th member before any class's (k+1)-th
    order = torch.argsort(rank * (int(classes.max()) + 1) + classes, stable=True)
    return shuffled[order[:n]].sort().values


def _no_report(epoch: int, accuracy: float, loss: float) -> bool:
    return False


def _seconds(t0: float) -> float:
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: ImageData,
                      accelerator: Accelerator, batch_size: int = 500) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` on uint8 images ``x``, all processes sharing the work."""
    loader = accelerator.prepare_data_loader(DataLoader(TensorDataset(x, y), batch_size=batch_size))
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = 0

    def batch_sums(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        interrupt.check()
        logits = model(normalise(xb, data)).float()
        losses = torch.nn.functional.cross_entropy(logits, yb, reduction="none")
        return torch.stack([(logits.argmax(1) == yb).double(), losses.double()], 1)

    for xb, yb in loader:
        sums = accelerator.gather_for_metrics(run_guarded(accelerator, batch_sums, xb, yb))
        correct += sums[:, 0].sum()
        loss += sums[:, 1].sum()
        count += len(sums)
    model.train(was_training)
    return 100.0 * float(correct) / max(count, 1), float(loss) / max(count, 1)


def average_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Average the BatchNorm statistics over processes: each replica's last forward saw only its own shard,
    so without this the replicas would evaluate (and save) different running statistics."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.copy_(accelerator.reduce(buf.clone(), "mean"))


def train_network(
    model: torch.nn.Module,
    data: ImageData,
    train_idx: torch.Tensor,
    eval_sets: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    cfg: VisionTrainConfig,
    accelerator: Accelerator,
    report: EpochReporter | None = None,
) -> tuple[torch.nn.Module, VisionTrainResult]:
    """Train ``model`` on ``data.train_x[train_idx]`` within ``cfg``'s budget, then measure every evaluation set.

    Args:
        eval_sets: name -> indices into the training set (e.g. the validation half), or ``(x_uint8, y)``
            (e.g. ``(data.test_x, data.test_y)``).
        report: with ``cfg.eval_every_epochs``, called with the first evaluation set's figures at each of those
            epochs (but the last); when it returns True on the main process, every process stops with
            :class:`~llmnas.train.TrainingPruned` (its ``step`` is the epoch).

    Under ``accelerate launch`` every process calls this with the same arguments; the processes agree on
    every decision (:mod:`llmnas.train.ranks`) and end together, also when one of them fails.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        TrainingFailed: another process raised.
        TrainingPruned: ``report`` asked to stop.
    """
    check_accelerator(accelerator, cfg)  # reads grad_accum and grad_clip, which this config shares
    world = accelerator.num_processes
    idx = stratified_subset(train_idx, data.train_y[train_idx], cfg.train_images, cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = max(1, len(idx) // per_step)  # drop_last: every batch is full
    budget = [s for s in (cfg.max_steps, math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs else None) if s]
    steps_budget = min(budget) if budget else None

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
        set_seed(cfg.seed)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
        order = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(TensorDataset(data.train_x[idx], data.train_y[idx]), batch_size=cfg.batch_size,
                            shuffle=True, drop_last=True, generator=order)
        return model, opt, loader

    net, optimizer, loader = run_guarded(accelerator, build)
    params = sum(p.numel() for p in net.parameters())
    net, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    net.train()
    aug = torch.Generator().manual_seed(cfg.seed * 1000 + accelerator.process_index)
    step, images, recent, recent_acc = 0, 0, [], []
    history: list[tuple[int, float, float]] = []
    train_seconds, eval_seconds = 0.0, 0.0
    first_name = next(iter(eval_sets), None)  # the set the epoch reports measure
    eval_steps = cfg.eval_every_epochs * steps_per_epoch if cfg.eval_every_epochs and first_name else None
    first_spec = eval_sets.get(first_name) if first_name else None
    first_set = (data.train_x[first_spec], data.train_y[first_spec]) if isinstance(first_spec, torch.Tensor) \
        else first_spec
    started = time.perf_counter()
    epoch_batches = iter(loader)
    try:
        while True:
            progress = from_main(train_seconds / cfg.max_seconds, accelerator) if cfg.max_seconds else None
            if (steps_budget is not None and step >= steps_budget) or (progress is not None and progress >= 1.0):
                break
            lr = lr_at(cfg, step, steps_budget, progress)  # type: ignore[arg-type]  # the fields it reads are shared
            for group in optimizer.param_groups:
                group["lr"] = lr
            for _ in range(cfg.grad_accum):
                try:
                    xb, yb = next(epoch_batches)
                except StopIteration:  # the next epoch, in a new order
                    epoch_batches = iter(loader)
                    xb, yb = next(epoch_batches)
                with accelerator.accumulate(net):
                    loss, error, logits = None, None, None
                    try:
                        interrupt.check()
                        inputs = augment(xb, aug, data) if cfg.augment else normalise(xb, data)
                        logits = net(inputs)
                        loss = torch.nn.functional.cross_entropy(logits.float(), yb)
                    except (Exception, KeyboardInterrupt) as e:  # announced to the others before backward
                        error = e
                    value = agreed_update(net, optimizer, loss, error, cfg, accelerator, step)  # type: ignore[arg-type]
                images += len(yb) * world
                assert logits is not None
                recent_acc = (recent_acc + [100.0 * float((logits.argmax(1) == yb).float().mean())])[-20:]
            step += 1
            recent = (recent + [value])[-20:]
            if cfg.log_interval and step % cfg.log_interval == 0:
                accelerator.print(f"step {step}: loss {value:.4f}, lr {lr:.3g}")
            train_seconds = _seconds(started) - eval_seconds
            if eval_steps and step % eval_steps == 0 and step != steps_budget:
                t0 = time.perf_counter()
                unwrapped = accelerator.unwrap_model(net)
                average_buffers(unwrapped, accelerator)
                assert first_set is not None
                acc, loss_value = evaluate_accuracy(unwrapped, *first_set, data, accelerator, cfg.eval_batch_size)
                epoch = step // steps_per_epoch
                history.append((epoch, acc, loss_value))
                prune = bool(run_guarded(accelerator, report or _no_report, epoch, acc, loss_value))  # collective
                eval_seconds += _seconds(t0)
                if main_decides(prune, accelerator):
                    raise TrainingPruned(epoch, loss_value, f"pruned after epoch {epoch} ({first_name} accuracy "
                                                            f"{acc:.2f} %, loss {loss_value:.4f})")
        t0 = time.perf_counter()
        accuracy, losses = {}, {}
        unwrapped = accelerator.unwrap_model(net)
        average_buffers(unwrapped, accelerator)
        for name, spec in eval_sets.items():
            x, y = (data.train_x[spec], data.train_y[spec]) if isinstance(spec, torch.Tensor) else spec
            accuracy[name], losses[name] = evaluate_accuracy(unwrapped, x, y, data, accelerator, cfg.eval_batch_size)
        if first_name is not None and step % steps_per_epoch == 0:
            history.append((step // steps_per_epoch, accuracy[first_name], losses[first_name]))
        result = VisionTrainResult(
            accuracy=accuracy,
            loss=losses,
            train_loss=sum(recent) / len(recent) if recent else float("nan"),
            train_accuracy=sum(recent_acc) / len(recent_acc) if recent_acc else float("nan"),
            steps=step,
            images=images,
            train_images=len(idx),
            train_seconds=train_seconds,
            eval_seconds=eval_seconds + _seconds(t0),
            images_per_second=images / max(train_seconds, 1e-9),
            params=params,
            history=history,
        )
        return unwrapped, result
    finally:
        accelerator.free_memory()


def train_cell(
    network: NB201Cell | str,
    data: ImageData,
    train_idx: torch.Tensor,
    eval_sets: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    cfg: VisionTrainConfig,
    accelerator: Accelerator,
    report: EpochReporter | None = None,
) -> tuple[torch.nn.Module, VisionTrainResult]:
    """Build ``network`` (a cell, its string, or ``"resnet"``) with ``cfg.C``/``cfg.N`` (seeded) and train it."""
    set_seed(cfg.seed)
    return train_network(build_network(network, cfg, data), data, train_idx, eval_sets, cfg, accelerator, report)

