"""One one-shot search, start to end: data halves, supernet, strategy steps, the found cell.

Example:
    >>> from llmnas.vision.data import load_images
    >>> data = load_images("../shared/data/images/cifar10_jpg.tar.gz")   # doctest: +SKIP
    >>> result = run_search("gdas", data, OneShotConfig(), seed=0)        # doctest: +SKIP
    >>> result.cell                                                       # doctest: +SKIP
    '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|...'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from llmnas.errors import RecipeError
from llmnas.vision.data import ImageData, augment, nb201_split, normalise
from llmnas.vision.oneshot.config import STRATEGIES, OneShotConfig
from llmnas.vision.oneshot.evaluate import CellScorer
from llmnas.vision.oneshot.select import perturbation_select
from llmnas.vision.oneshot.strategies import STRATEGY_CLASSES, Strategy, _ArchLogits
from llmnas.vision.oneshot.supernet import CellSuperNet


@dataclass
class SearchData:
    """The images a search sees: ``train_images`` / ``valid_images`` of NAS-Bench-201's two halves of the
    training set, a fixed random subset of each (the test set is never touched)."""

    data: ImageData
    train_idx: torch.Tensor
    valid_idx: torch.Tensor
    batch_size: int
    device: str = "cpu"

    @classmethod
    def build(cls, data: ImageData, cfg: OneShotConfig) -> SearchData:
        train, valid = nb201_split(data, seed=0)
        # a fixed shuffle before taking a subset: the halves are sorted by index, and image folders by class
        gen = torch.Generator().manual_seed(0)
        train = train[torch.randperm(len(train), generator=gen)]
        valid = valid[torch.randperm(len(valid), generator=gen)]
        train = train[: cfg.train_images] if cfg.train_images else train
        valid = valid[: cfg.valid_images] if cfg.valid_images else valid
        if len(train) < cfg.batch_size or len(valid) < cfg.batch_size:
            raise RecipeError(f"train_images/valid_images ({len(train)}/{len(valid)}) must hold at least one batch "
                              f"of {cfg.batch_size}")
        return cls(data, torch.as_tensor(train), torch.as_tensor(valid), cfg.batch_size, cfg.device)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_idx) // self.batch_size

    def batches(self, half: str, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Augmented batches of one half in a fresh random order; endless (the caller counts steps)."""
        idx = self.train_idx if half == "train" else self.valid_idx
        while True:
            order = idx[torch.randperm(len(idx), generator=generator)]
            for i in range(0, len(order) - self.batch_size + 1, self.batch_size):
                b = order[i : i + self.batch_size]
                x = augment(self.data.train_x[b].to(self.device), generator, self.data)
                yield x, self.data.train_y[b].to(self.device)

    def fixed(self, half: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` images of a half, normalised, not augmented (for BN recalibration and scoring)."""
        idx = (self.train_idx if half == "train" else self.valid_idx)[:n]
        return normalise(self.data.train_x[idx].to(self.device), self.data), self.data.train_y[idx].to(self.device)

    def scorer(self, net: CellSuperNet, cfg: OneShotConfig) -> CellScorer:
        calib, _ = self.fixed("train", cfg.bn_batches * cfg.batch_size)
        x, y = self.fixed("valid", cfg.eval_images)
        return CellScorer(net, list(calib.split(cfg.batch_size)), x, y)


@dataclass
class SearchResult:
    """What one search found and how it got there."""

    strategy: str
    seed: int
    cell: str
    """The found cell, official NAS-Bench-201 string."""
    wall_seconds: float
    """The whole search: supernet training, architecture updates and the final pick."""
    train_seconds: float
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_search(
    strategy: str,
    data: ImageData,
    cfg: OneShotConfig,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Train the supernet with ``strategy`` for ``cfg.epochs_of(strategy)`` epochs and return the found cell
    (``cfg.select``: by the largest architecture weight per edge, or by perturbation, :mod:`.select`)."""
    if strategy not in STRATEGY_CLASSES:
        raise RecipeError(f"unknown one-shot strategy {strategy!r} (allowed: {', '.join(STRATEGIES)})")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(strategy, data, cfg, seed, log or (lambda _: None))
    finally:
        torch.set_num_threads(threads)


def _run(strategy: str, data: ImageData, cfg: OneShotConfig, seed: int, log: Callable[[str], None]) -> SearchResult:
    cfg.check_strategies([strategy])
    torch.manual_seed(seed)
    halves = SearchData.build(data, cfg)
    net = CellSuperNet(cfg.C, cfg.N, num_classes=len(data.classes), in_channels=int(data.train_x.shape[1]))
    net.to(cfg.device)
    epochs = cfg.epochs_of(strategy)
    total = epochs * halves.steps_per_epoch
    strat: Strategy = STRATEGY_CLASSES[strategy](net, cfg, seed, total)
    generator = torch.Generator().manual_seed(10_000 + seed)
    train = halves.batches("train", generator)
    valid = halves.batches("valid", generator) if strat.uses_valid else None
    every = max(1, halves.steps_per_epoch // cfg.snapshots_per_epoch)
    history: list[dict[str, Any]] = []
    losses: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    def train_steps(n: int, phase: str) -> None:
        net.train()
        for _ in range(n):
            losses.append(strat.step(next(train), next(valid) if valid is not None else None))
            step = strat.steps
            if step % every == 0 or step == total:
                loss, acc = (sum(v) / len(losses) for v in zip(*losses, strict=True))
                history.append({"step": step, "epoch": round(step / halves.steps_per_epoch, 3),
                                "train_loss": round(loss, 4), "train_acc": round(acc, 2), **strat.snapshot(),
                                **({"phase": phase} if phase != "search" else {})})
                losses.clear()
                log(f"{strategy} seed {seed}: {phase} epoch {history[-1]['epoch']:.2f}/{epochs}, loss {loss:.3f}, "
                    f"acc {acc:.1f}%, {time.perf_counter() - t0:.0f} s")

    train_steps(total, "search")
    train_seconds = time.perf_counter() - t0
    cell, extra = strat.finish(halves.scorer(net, cfg))
    if cfg.select == "perturbation":
        assert isinstance(strat, _ArchLogits)
        strat.lr_override = cfg.lr / 10

        def tune() -> None:
            train_steps(cfg.pt_tune_epochs * halves.steps_per_epoch, "select")

        images = halves.fixed("valid", cfg.pt_images or len(halves.valid_idx))
        argmax = cell
        cell, record = perturbation_select(strat, images, tune, log)
        extra = {**extra, "argmax_cell": argmax.to_str(), "perturbation": record,
                 "select_seconds": round(time.perf_counter() - t0 - train_seconds, 1)}
    wall = time.perf_counter() - t0
    log(f"{strategy} seed {seed}: found {cell} in {wall:.0f} s")
    return SearchResult(strategy=strategy, seed=seed, cell=cell.to_str(), wall_seconds=round(wall, 1),
                        train_seconds=round(train_seconds, 1), steps=strat.steps, history=history, extra=extra,
                        config=cfg.to_dict())
