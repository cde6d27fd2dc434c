"""How a NAS-Bench-201 run and a reference row are scored: one rule, fixed in advance.

**The search signal** is the 12-epoch validation accuracy rounded to :data:`SIGNAL_DECIMALS` (4)
decimals. The tables store float32 percentages of correct images, so two cells with the same count can
differ in the 7th digit; the counts come in steps of 0.002 % (CIFAR-10), 0.02 % (CIFAR-100) and
0.033 % (ImageNet16-120), and no value lies within 1.6e-5 of a 4-decimal rounding boundary, so rounding
to 4 decimals makes equal counts equal and keeps different counts apart (checked on the shipped tables
by ``tests/benchmarks/test_nb201_score.py``).

**Ties.** Cells whose signal equals the best signal are tied; the search cannot tell them apart. A run is
scored by the *expected* reported value over the distinct tied cells it evaluated (the mean of their
200-epoch test accuracies: what a uniformly random pick among them would report), not by whichever of
them it happened to find first. The reference row "exhaustive search on the signal" is scored the same
way, over every tied cell of the table. In cap mode the same rule applies to the feasible cells (latency
within the cap) only.

**Pareto mode** is scored by hypervolume, which ties do not affect.
"""

from __future__ import annotations

import math

import numpy as np

#: Decimals the validation accuracy (in %) is rounded to before anyone sees it; see the module docstring.
SIGNAL_DECIMALS = 4


def search_signal(val: np.ndarray, decimals: int = SIGNAL_DECIMALS) -> np.ndarray:
    """The validation accuracies as the search sees them: rounded so that equal image counts are equal."""
    return np.round(np.asarray(val, dtype=float), decimals)


def tie_curve(
    signal: np.ndarray, report: np.ndarray, order: np.ndarray, feasible: np.ndarray | None = None
) -> tuple[tuple[float, ...], list[int]]:
    """The score after each evaluation of a run, and the distinct tied best cells at the end.

    Args:
        signal: the search signal of every cell (:func:`search_signal`).
        report: the value reported for every cell (200-epoch test accuracy, or the signal itself).
        order: the official indices the run evaluated, in order (repeats allowed).
        feasible: which cells may be chosen (cap mode); ``None``: all.

    Returns:
        ``(curve, tied)``: ``curve[k]`` is the mean of ``report`` over the distinct feasible cells among
        the first ``k + 1`` evaluations whose signal equals the best feasible signal so far (NaN before
        the first feasible cell); ``tied`` lists those cells at the end, in the order they were found.
    """
    curve: list[float] = []
    best, tied, total = -math.inf, [], 0.0
    for i in (int(x) for x in order):
        if feasible is None or feasible[i]:
            if signal[i] > best:
                best, tied, total = float(signal[i]), [i], float(report[i])
            elif signal[i] == best and i not in tied:
                tied.append(i)
                total += float(report[i])
        curve.append(total / len(tied) if tied else math.nan)
    return tuple(curve), tied


def exhaustive(signal: np.ndarray, report: np.ndarray, feasible: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Exhaustive search on the signal: the mean ``report`` over every feasible cell tied at the best
    feasible signal, and those cells (NaN and none when no cell is feasible)."""
    ok = np.ones(len(signal), bool) if feasible is None else np.asarray(feasible, bool)
    if not ok.any():
        return math.nan, np.array([], int)
    best = signal[ok].max()
    tied = np.flatnonzero(ok & (signal == best))
    return float(np.mean(report[tied])), tied


# ---------------------------------------------------------------------- pareto mode
def scaled_objectives(val: np.ndarray, latency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validation accuracy and speed, both scaled to [0, 1] over the table and maximised."""
    a = (val - val.min()) / (val.max() - val.min())
    b = (latency.max() - latency) / (latency.max() - latency.min())
    return a, b


def hypervolume_2d(a: np.ndarray, b: np.ndarray) -> float:
    """Area dominated by points ``(a, b)`` (both maximised, in [0, 1]) above the reference point (0, 0)."""
    order = np.lexsort((-b, -a))
    hv, best_b = 0.0, 0.0
    for i in order:
        if b[i] > best_b:
            hv += a[i] * (b[i] - best_b)
            best_b = b[i]
    return hv


def hv_curve(val: np.ndarray, latency: np.ndarray, order: np.ndarray) -> tuple[float, ...]:
    """Hypervolume of the cells evaluated so far after each evaluation, relative to that of all cells."""
    a, b = scaled_objectives(val, latency)
    total = hypervolume_2d(a, b)
    return tuple(hypervolume_2d(a[order[: k + 1]], b[order[: k + 1]]) / total for k in range(len(order)))
