"""NAS-Bench-201's network: parameter counts against the official figures, shapes, cell semantics."""

from __future__ import annotations

import pytest
import torch

from llmnas.errors import ArchitectureError
from llmnas.space.nb201 import OPS as OP_NAMES
from llmnas.space.nb201 import NB201Cell
from llmnas.vision.network import CellNetwork, InferCell, nb201_network, param_count, resnet_network
from llmnas.vision.ops import OPS, ResNetBasicBlock

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ISSUE_36 = "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"

# Official parameter counts (millions, classifier included; NAS-Bench-201's "params" in MB), C=16, N=5:
# - the largest and smallest cells of the space (all nor_conv_3x3; any cell without a parameterised op)
#   per data set, from the NAS-Bench-201 v1_1 tables as printed in a public script that scans them
#   ("CIFAR 10 VALID min_params 0.073306 max_params 1.531546 / CIFAR 100: 0.079156 1.537396 /
#   IMAGE NET: 0.080456 1.538696"), the same figures as evoxbench's NB201 min/max normalisation table;
# - ISSUE_36: NATS-Bench issue #36 (github.com/D-X-Y/NATS-Bench/issues/36), api.get_cost_info(idx,
#   "cifar10", hp="12") -> 'params': 0.802426 for that cell.
OFFICIAL = [
    (ALL_CONV3, 10, 3, 1.531546),
    (ALL_NONE, 10, 3, 0.073306),
    (ALL_CONV3, 100, 3, 1.537396),
    (ALL_NONE, 100, 3, 0.079156),
    (ALL_CONV3, 120, 3, 1.538696),
    (ALL_NONE, 120, 3, 0.080456),
    (ISSUE_36, 10, 3, 0.802426),
]


@pytest.mark.parametrize(("cell", "classes", "channels", "millions"), OFFICIAL)
def test_parameter_counts_match_the_official_figures(cell: str, classes: int, channels: int, millions: float) -> None:
    net = nb201_network(cell, C=16, N=5, num_classes=classes, in_channels=channels)
    assert param_count(net) == round(millions * 1e6)


def test_skeleton_shapes_and_cells() -> None:
    net = nb201_network(ALL_CONV3, C=8, N=2)
    assert len(net.cells) == 6 and all(isinstance(c, InferCell) for c in net.cells)
    assert [c.edges[0].op[1].in_channels for c in net.cells] == [8, 8, 16, 16, 32, 32]
    assert net(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)  # ImageNet16-120's size too
    gray = nb201_network(ALL_CONV3, C=4, N=1, num_classes=7, in_channels=1)
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_every_op_keeps_the_shape_and_none_is_zero() -> None:
    assert tuple(OPS) == OP_NAMES
    x = torch.randn(2, 4, 8, 8)
    for name, make in OPS.items():
        assert make(4, 4, 1, True, True)(x).shape == x.shape, name
        assert make(4, 8, 2, True, True)(x).shape == (2, 8, 4, 4), name
    assert torch.equal(OPS["none"](4, 4, 1, True, True)(x), torch.zeros_like(x))
    assert OPS["skip_connect"](4, 4, 1, True, True)(x) is x
    assert sum(p.numel() for p in OPS["avg_pool_3x3"](4, 4, 1, True, True).parameters()) == 0


def test_infer_cell_sums_the_edges_into_each_node() -> None:
    # node1 = skip(x) = x; node2 = none(x) + skip(node1) = x; node3 = skip(x) + none(n1) + skip(n2) = 2x
    text = "|skip_connect~0|+|none~0|skip_connect~1|+|skip_connect~0|none~1|skip_connect~2|"
    cell = InferCell(NB201Cell.from_str(text), 4)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(cell(x), 2 * x)
    disconnected = nb201_network(ALL_NONE, C=4, N=1).eval()  # no path from input to output: constant logits
    out = disconnected(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(out, out[:1].expand_as(out))


def test_resnet_baseline_and_extra_cell_arguments() -> None:
    resnet = resnet_network(C=16, N=5)
    assert all(isinstance(c, ResNetBasicBlock) for c in resnet.cells) and len(resnet.cells) == 15
    assert resnet_network(C=4, N=1)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # 15 blocks of two 3x3 convs (+ BN) and the two reductions' shortcuts: 0.559386 M (the skeleton's own count)
    assert param_count(resnet) == 559_386

    class Scaled(torch.nn.Module):  # a search cell takes extra arguments from forward
        def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
            return x * scale

    net = CellNetwork(lambda c: Scaled(), C=4, N=1).eval()
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(net(x, 1.0), net(x, 0.0))


def test_a_string_that_is_not_a_cell_is_one_clear_error() -> None:
    with pytest.raises(ArchitectureError, match="unknown operation 'conv_5x5'"):
        nb201_network("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(ArchitectureError, match="expected 3"):
        nb201_network("|nor_conv_3x3~0|")
