"""NAS-Bench-201's cell operations and its residual reduction block, as PyTorch modules.

The definitions follow the NAS-Bench-201 paper (Dong & Yang, ICLR 2020) and its reference code
(``xautodl/models/cell_operations.py``): every convolution is ReLU -> Conv -> BatchNorm with a
bias only when the BatchNorm has no affine parameters; ``avg_pool_3x3`` does not count padding;
``none`` outputs zeros; ``skip_connect`` is the identity (a factorised reduction when the shape
changes, which never happens inside an NAS-Bench-201 cell).

Every entry of :data:`OPS` is ``fn(C_in, C_out, stride, affine, track_running_stats) -> nn.Module``,
so a supernet can build all five candidates of an edge with one call each.

Example:
    >>> op = OPS["nor_conv_3x3"](16, 16, 1, True, True)
    >>> op(torch.zeros(2, 16, 8, 8)).shape
    torch.Size([2, 16, 8, 8])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llmnas.space.nb201 import OPS as OP_NAMES


class ReLUConvBN(nn.Module):
    """ReLU -> Conv2d -> BatchNorm2d (NAS-Bench-201's ``nor_conv_kxk``)."""

    def __init__(
        self, C_in: int, C_out: int, kernel: int, stride: int, padding: int,
        affine: bool = True, track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, bias=not affine),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Pooling(nn.Module):
    """3x3 average pooling (padding not counted), after a 1x1 ReLU-Conv-BN when the width changes."""

    def __init__(
        self, C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True
    ) -> None:
        super().__init__()
        self.preprocess = (
            None if C_in == C_out else ReLUConvBN(C_in, C_out, 1, 1, 0, affine, track_running_stats)
        )
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x if self.preprocess is None else self.preprocess(x))


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output's shape (no parameters)."""

    def __init__(self, C_in: int, C_out: int, stride: int) -> None:
        super().__init__()
        self.C_in, self.C_out, self.stride = C_in, C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]
        if self.C_in == self.C_out:
            return x.mul(0.0)  # keeps the graph (and NaN propagation) as the reference code does
        shape = list(x.shape)
        shape[1] = self.C_out
        return x.new_zeros(shape)

    def extra_repr(self) -> str:
        return f"C_in={self.C_in}, C_out={self.C_out}, stride={self.stride}"


class FactorizedReduce(nn.Module):
    """ReLU, then two offset stride-2 1x1 convolutions concatenated (or one 1x1 conv at stride 1), then BN."""

    def __init__(
        self, C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"FactorizedReduce supports stride 1 or 2, got {stride}")
        self.stride = stride
        self.relu = nn.ReLU(inplace=False)
        if stride == 2:
            halves = (C_out // 2, C_out - C_out // 2)
            self.convs = nn.ModuleList(nn.Conv2d(C_in, c, 1, stride=2, bias=not affine) for c in halves)
            self.pad = nn.ConstantPad2d((0, 1, 0, 1), 0.0)
        else:
            self.conv = nn.Conv2d(C_in, C_out, 1, bias=not affine)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if self.stride == 2:
            y = self.pad(x)
            out = torch.cat([self.convs[0](x), self.convs[1](y[:, :, 1:, 1:])], dim=1)
        else:
            out = self.conv(x)
        return self.bn(out)


def _skip(C_in: int, C_out: int, stride: int, affine: bool, track: bool) -> nn.Module:
    if stride == 1 and C_in == C_out:
        return nn.Identity()
    return FactorizedReduce(C_in, C_out, stride, affine, track)


#: ``name -> fn(C_in, C_out, stride, affine, track_running_stats)``; keys are exactly the space's op names.
OPS: dict[str, Callable[[int, int, int, bool, bool], nn.Module]] = {
    "none": lambda C_in, C_out, stride, affine, track: Zero(C_in, C_out, stride),
    "skip_connect": _skip,
    "nor_conv_1x1": lambda C_in, C_out, stride, affine, track: ReLUConvBN(C_in, C_out, 1, stride, 0, affine, track),
    "nor_conv_3x3": lambda C_in, C_out, stride, affine, track: ReLUConvBN(C_in, C_out, 3, stride, 1, affine, track),
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, track: Pooling(C_in, C_out, stride, affine, track),
}
assert tuple(OPS) == OP_NAMES


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's residual block: two 3x3 ReLU-Conv-BN plus a shortcut.

    At stride 2 (the reduction between stages) the shortcut is a 2x2 average pool and a 1x1
    convolution; when only the width changes it is a 1x1 ReLU-Conv-BN; otherwise the identity.
    """

    def __init__(
        self, C_in: int, C_out: int, stride: int, affine: bool = True, track_running_stats: bool = True
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResNetBasicBlock supports stride 1 or 2, got {stride}")
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine, track_running_stats)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine, track_running_stats)
        self.downsample: nn.Module | None
        if stride == 2:
            self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(C_in, C_out, 1, bias=False))
        elif C_in != C_out:
            self.downsample = ReLUConvBN(C_in, C_out, 1, 1, 0, affine, track_running_stats)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))
