"""Scoring cells with the supernet's inherited weights, BatchNorm statistics recalibrated per cell.

A weight-shared supernet's BatchNorm running statistics mix every path it trained; a single path needs
its own. :func:`recalibrate_bn` resets them and re-estimates them (a cumulative average) on a few fixed
training batches run through that path, as SPOS does; :class:`CellScorer` then measures the path's
accuracy on fixed validation images. Both are deterministic: the same supernet weights, cell and images
give the same accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llmnas.space.nb201 import NB201Cell


@torch.no_grad()
def recalibrate_bn(net: nn.Module, cell: NB201Cell, batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running mean and variance for ``cell`` on ``batches`` (inputs only)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    was_training = net.training
    net.train()
    try:
        for x in batches:
            net(x, cell)
    finally:
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum
        net.train(was_training)


@torch.no_grad()
def accuracy(net: nn.Module, cell: NB201Cell, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (%) of ``cell`` on ``x``, in eval mode."""
    was_training = net.training
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((net(x[i : i + batch_size], cell).argmax(-1) == y[i : i + batch_size]).sum())
    net.train(was_training)
    return 100.0 * correct / max(1, len(x))


@dataclass
class CellScorer:
    """Accuracy of any cell with inherited weights: BN recalibrated on ``calib`` batches, scored on ``x, y``."""

    net: nn.Module
    calib: list[torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    evaluations: int = 0

    def __call__(self, cell: NB201Cell) -> float:
        recalibrate_bn(self.net, cell, self.calib)
        self.evaluations += 1
        return accuracy(self.net, cell, self.x, self.y)
