"""Perturbation-based selection of the found cell from a trained mixture supernet (DARTS-PT).

Wang et al. (ICLR 2021, "Rethinking architecture selection in differentiable NAS") show that an op's
architecture weight need not say how much the supernet relies on it: on NAS-Bench-201 DARTS's skip
connections gain weight while the supernet's accuracy rests on the convolutions. Their selection asks the
supernet instead. Edge by edge, in a random order: remove each op from the edge's mixture in turn (its weight
set to zero, the others left as they are), measure the supernet's validation accuracy, keep the op whose
removal costs the most, fix the edge to it, and train the supernet a little before the next edge, so that it
adapts to the fixed choice.

:func:`perturbation_select` runs this on any strategy with mixture op weights (DARTS, DARTS-, DrNAS); the
training between decisions is the strategy's own step (weights with SGD at ``lr / 10``, the remaining
architecture parameters as during the search).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from llmnas.space.nb201 import EDGES, OPS, NB201Cell
from llmnas.vision.oneshot.strategies import _ArchLogits, batch_statistics

if TYPE_CHECKING:
    from llmnas.vision.oneshot.supernet import CellSuperNet

#: Images per forward pass when a mixture is measured (BatchNorm uses the statistics of each such batch).
EVAL_BATCH = 250


@torch.no_grad()
def mixture_accuracy(net: CellSuperNet, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy (%) and mean cross-entropy of the supernet running the ``(6, 5)`` mixture ``weights`` on ``x``,
    BatchNorm on batch statistics (as during the search; running statistics untouched)."""
    correct, loss = 0, 0.0
    with batch_statistics(net):
        for i in range(0, len(x), EVAL_BATCH):
            logits = net(x[i : i + EVAL_BATCH], weights)
            target = y[i : i + EVAL_BATCH]
            correct += int((logits.argmax(-1) == target).sum())
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
    n = max(1, len(x))
    return 100.0 * correct / n, loss / n


def perturbation_select(
    strat: _ArchLogits,
    valid: tuple[torch.Tensor, torch.Tensor],
    tune: Callable[[], None],
    log: Callable[[str], None] = lambda _: None,
) -> tuple[NB201Cell, dict[str, Any]]:
    """Fix the six edges one at a time by the op whose removal lowers ``valid`` accuracy most (ties: the larger
    validation loss, then the first op); ``tune()`` trains the supernet between two decisions.

    Returns the cell and, per decision, the edge, the accuracy and loss of the mixture before the decision and
    with each op removed, and the op kept."""
    x, y = valid
    order = [int(e) for e in strat.rng.permutation(len(EDGES))]
    decisions: list[dict[str, Any]] = []
    for i, e in enumerate(order):
        if i:
            tune()
        base = strat.mixture()
        acc, loss = mixture_accuracy(strat.net, base, x, y)
        removed = []
        for k in range(len(OPS)):
            w = base.clone()
            w[e, k] = 0.0
            removed.append(mixture_accuracy(strat.net, w, x, y))
        keep = min(range(len(OPS)), key=lambda k: (removed[k][0], -removed[k][1], k))
        strat.projected[e] = keep
        decisions.append({"edge": e, "edge_name": f"{EDGES[e][1]}->{EDGES[e][0]}", "acc": acc, "loss": loss,
                          "removed": {OPS[k]: {"acc": a, "loss": lo} for k, (a, lo) in enumerate(removed)},
                          "kept": OPS[keep]})
        log(f"perturbation: edge {EDGES[e][1]}->{EDGES[e][0]} (decision {i + 1}/{len(EDGES)}): mixture acc "
            f"{acc:.2f}%, without each op " + ", ".join(f"{OPS[k]} {a:.2f}" for k, (a, _) in enumerate(removed))
            + f" -> {OPS[keep]}")
    cell = NB201Cell(tuple(OPS[strat.projected[e]] for e in range(len(EDGES))))
    return cell, {"order": order, "decisions": decisions}
