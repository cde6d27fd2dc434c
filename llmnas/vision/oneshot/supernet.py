"""The weight-shared NAS-Bench-201 cell supernet: every edge holds all five operations.

One :class:`CellSuperNet` serves every one-shot strategy; what a strategy passes as ``arch`` to
``forward(x, arch)`` says which operations run on each of the cell's six edges (the same ``arch`` for
every cell, as NAS-Bench-201 searches one cell):

- a :class:`~llmnas.space.nb201.NB201Cell`: one path (SPOS, ENAS, evaluation of a found cell);
- a ``(6, 5)`` tensor of op weights: the weighted sum of all five ops on each edge (DARTS's continuous
  relaxation; a one-hot tensor gives exactly the fixed cell's output);
- a :class:`Hard` sample: one op per edge, scaled by its straight-through weight (GDAS), so that only
  the sampled op is computed but every op's logit gets a gradient;
- a :class:`AuxSkip` mixture: the weighted sum of a ``(6, 5)`` tensor plus ``beta`` times the edge's input,
  an auxiliary skip connection beside the candidate ops (DARTS-).

:meth:`CellSuperNet.extract` returns a standalone :class:`~llmnas.vision.network.CellNetwork` of one
cell with copies of the shared weights (the vision counterpart of the transformer supernet's
``SuperNet.extract``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmnas.space.nb201 import EDGES, OPS, NB201Cell
from llmnas.vision.network import CellNetwork, InferCell
from llmnas.vision.ops import OPS as OP_MODULES

PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3")


@dataclass(frozen=True)
class Hard:
    """A GDAS sample: ``index[e]`` is the op run on edge ``e``; ``weights`` the ``(6, 5)`` straight-through
    one-hot weights (value one at ``index``, zero elsewhere, gradient of the soft sample everywhere)."""

    weights: torch.Tensor
    index: tuple[int, ...]


@dataclass(frozen=True)
class AuxSkip:
    """DARTS-'s relaxation: every edge outputs its ``(6, 5)`` ``weights``' mixture of the five ops plus ``beta``
    times its input (an auxiliary skip connection outside the searched ops; ``beta`` decays to 0)."""

    weights: torch.Tensor
    beta: float


Arch = NB201Cell | torch.Tensor | Hard | AuxSkip


class MixedEdge(nn.Module):
    """The five candidate operations of one edge (``C`` channels in and out, stride 1)."""

    def __init__(self, C: int, affine: bool, track_running_stats: bool) -> None:
        super().__init__()
        self.ops = nn.ModuleList(OP_MODULES[name](C, C, 1, affine, track_running_stats) for name in OPS)

    def forward(self, x: torch.Tensor, w: torch.Tensor | int, index: int | None = None) -> torch.Tensor:
        if isinstance(w, int):  # one path
            return self.ops[w](x)
        if index is not None:  # GDAS: the other ops add their (zero-valued) weights so their logits get a gradient
            return self.ops[index](x) * w[index] + (w.sum() - w[index])
        return sum(wk * op(x) for wk, op in zip(w, self.ops, strict=True))


class SearchCell(nn.Module):
    """NAS-Bench-201's cell with a :class:`MixedEdge` on each of the six edges ``EDGES``."""

    def __init__(self, C: int, affine: bool = False, track_running_stats: bool = True) -> None:
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(C, affine, track_running_stats) for _ in EDGES)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        beta = 0.0
        if isinstance(arch, AuxSkip):
            beta, arch = arch.beta, arch.weights
        if isinstance(arch, NB201Cell):
            args = [(OPS.index(op), None) for op in arch.ops]
        elif isinstance(arch, Hard):
            args = [(arch.weights[e], arch.index[e]) for e in range(len(EDGES))]
        else:
            args = [(arch[e], None) for e in range(len(EDGES))]
        nodes = [x]
        for node in (1, 2, 3):
            nodes.append(sum(self.edges[e](nodes[src], *args[e]) + (beta * nodes[src] if beta else 0.0)
                             for e, (dst, src) in enumerate(EDGES) if dst == node))
        return nodes[3]


class CellSuperNet(CellNetwork):
    """NAS-Bench-201's macro skeleton with a :class:`SearchCell` in every cell position.

    Args:
        C: channels of the first stage (16 in NAS-Bench-201).
        N: cells per stage (5 in NAS-Bench-201).
        num_classes: classifier outputs.
        in_channels: image channels.
        affine: learnable BatchNorm scale and shift in the cells' ops (``False`` as in DARTS's search).
    """

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3,
                 affine: bool = False) -> None:
        self.C, self.N, self.num_classes, self.in_channels, self.affine = C, N, num_classes, in_channels, affine
        super().__init__(lambda c: SearchCell(c, affine, True), C=C, N=N, num_classes=num_classes,
                         in_channels=in_channels)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, arch)

    @torch.no_grad()
    def extract(self, cell: NB201Cell) -> CellNetwork:
        """A standalone network of ``cell`` holding copies of the shared weights (same logits as
        ``forward(x, cell)`` in eval mode, and in train mode on the same batch)."""
        net = CellNetwork(lambda c: InferCell(cell, c, affine=self.affine, track_running_stats=True),
                          C=self.C, N=self.N, num_classes=self.num_classes, in_channels=self.in_channels)
        cell_ids = {id(m) for m in net.cells} | {id(m) for m in self.cells}
        # everything outside the cells has the same structure in both networks
        ours = _state_outside(self, cell_ids)
        theirs = _state_outside(net, cell_ids)
        if list(ours) != list(theirs):
            raise RuntimeError("supernet and cell network differ outside the cells")
        for name, t in theirs.items():
            t.copy_(ours[name])
        for search_cell, infer_cell in zip(self.cells, net.cells, strict=True):
            sources = [t for e, op in enumerate(cell.ops)
                       for t in search_cell.edges[e].ops[OPS.index(op)].state_dict().values()]
            targets = list(infer_cell.state_dict().values())
            if [s.shape for s in sources] != [t.shape for t in targets]:
                raise RuntimeError(f"the fixed cell's tensors do not match the supernet's ops of {cell}")
            for s, t in zip(sources, targets, strict=True):
                t.copy_(s)
        return net


def _state_outside(net: nn.Module, cell_ids: set[int]) -> dict[str, torch.Tensor]:
    """State tensors (parameters and buffers) of the modules that are not inside a cell, by name."""
    inside = set()
    for module in net.modules():
        if id(module) in cell_ids:
            inside |= {id(t) for t in module.state_dict(keep_vars=True).values()}
    return {k: v for k, v in net.state_dict(keep_vars=True).items() if id(v) not in inside}
