"""NAS-Bench-201's macro skeleton ("TinyNetwork") built around any cell module.

stem (3x3 conv + BN) -> N cells at C -> residual reduction to 2C -> N cells at 2C -> residual
reduction to 4C -> N cells at 4C -> BN + ReLU -> global average pool -> linear head.

The skeleton does not know what a cell is: ``cell_builder(C)`` returns one, and ``forward(x,
*cell_args)`` hands the same extra arguments to every cell, so a fixed cell (:class:`InferCell`,
no arguments), NAS-Bench-201's ResNet baseline (:func:`resnet_network`) and a weight-shared search
cell (which takes e.g. per-edge op weights) all use it.

Example:
    >>> from llmnas.space.nb201 import NB201Cell
    >>> cell = NB201Cell.from_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
    ...                           "+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    >>> net = nb201_network(cell, C=16, N=5)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llmnas.errors import ArchitectureError
from llmnas.space.nb201 import EDGES, NB201Cell
from llmnas.vision.ops import OPS, ResNetBasicBlock


class CellNetwork(nn.Module):
    """The NAS-Bench-201 skeleton; ``.cells`` lists the 3N cell modules in order (reductions excluded)."""

    def __init__(
        self,
        cell_builder: Callable[[int], nn.Module],
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if C < 1 or N < 1:
            raise ValueError(f"C and N must be positive, got C={C}, N={N}")
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C, 3, padding=1, bias=False),
            nn.BatchNorm2d(C, affine=affine, track_running_stats=track_running_stats),
        )
        layers: list[nn.Module] = []
        cells: list[nn.Module] = []
        for stage, width in enumerate((C, 2 * C, 4 * C)):
            if stage:
                layers.append(ResNetBasicBlock(width // 2, width, 2, affine, track_running_stats))
            for _ in range(N):
                cell = cell_builder(width)
                layers.append(cell)
                cells.append(cell)
        self.layers = nn.ModuleList(layers)
        self._is_cell = [any(layer is c for c in cells) for layer in layers]
        self.lastact = nn.Sequential(
            nn.BatchNorm2d(4 * C, affine=affine, track_running_stats=track_running_stats), nn.ReLU(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * C, num_classes)

    @property
    def cells(self) -> list[nn.Module]:
        return [layer for layer, is_cell in zip(self.layers, self._is_cell, strict=True) if is_cell]

    def forward(self, x: torch.Tensor, *cell_args) -> torch.Tensor:
        h = self.stem(x)  # (B, C, H, W)
        for layer, is_cell in zip(self.layers, self._is_cell, strict=True):
            h = layer(h, *cell_args) if is_cell else layer(h)
        h = self.pool(self.lastact(h)).flatten(1)  # (B, 4C)
        return self.classifier(h)


class InferCell(nn.Module):
    """A fixed NAS-Bench-201 cell: ``node_j = sum_{i<j} OPS[op_{j<-i}](node_i)``, output ``node_3``."""

    def __init__(
        self, cell: NB201Cell, C: int, affine: bool = True, track_running_stats: bool = True
    ) -> None:
        super().__init__()
        self.cell = cell
        self.edges = nn.ModuleList(
            OPS[op](C, C, 1, affine, track_running_stats) for op in cell.ops
        )  # one module per edge, in the order of EDGES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        k = 0
        for node in (1, 2, 3):
            total = None
            for source in range(node):
                assert EDGES[k] == (node, source)
                out = self.edges[k](nodes[source])
                total = out if total is None else total + out
                k += 1
            nodes.append(total)
        return nodes[3]

    def extra_repr(self) -> str:
        return self.cell.to_str()


def nb201_network(
    cell: NB201Cell | str, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3
) -> CellNetwork:
    """The NAS-Bench-201 network of ``cell`` (an :class:`NB201Cell` or its official string).

    Raises:
        ArchitectureError: ``cell`` is a string that is not an NAS-Bench-201 cell (the message says why).
    """
    if isinstance(cell, str):
        try:
            cell = NB201Cell.from_str(cell)
        except ValueError as e:
            raise ArchitectureError(str(e)) from None
    return CellNetwork(lambda width: InferCell(cell, width), C, N, num_classes, in_channels)


def resnet_network(C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3) -> CellNetwork:
    """NAS-Bench-201's ResNet baseline: the same skeleton with each cell a residual basic block."""
    return CellNetwork(lambda width: ResNetBasicBlock(width, width, 1), C, N, num_classes, in_channels)


def param_count(model: nn.Module, exclude_head: bool = False) -> int:
    """Number of parameters (optionally without the classifier, as NAS-Bench-201's cost tables do not)."""
    n = sum(p.numel() for p in model.parameters())
    if exclude_head and isinstance(model, CellNetwork):
        n -= sum(p.numel() for p in model.classifier.parameters())
    return n
