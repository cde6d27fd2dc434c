"""The scoring rule: expected value over tied best-validation cells, for runs and reference rows alike."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmnas.benchmarks import exhaustive, load_nb201, search_signal, tie_curve
from tests.conftest import shared_data

SIGNAL = np.array([50.0, 61.32, 61.32, 40.0, 61.32, 70.0])
REPORT = np.array([10.0, 72.28, 73.09, 40.0, 80.0, 99.0])


def test_a_run_scores_the_mean_over_the_tied_cells_it_found() -> None:
    curve, tied = tie_curve(SIGNAL, REPORT, np.array([0, 1, 3, 2, 1]))
    # the first-found rule would report 72.28 after cell 2 ties with cell 1; the expectation is their mean
    assert curve == pytest.approx((10.0, 72.28, 72.28, (72.28 + 73.09) / 2, (72.28 + 73.09) / 2))
    assert tied == [1, 2]  # a repeated evaluation is not counted twice
    reverse, tied_reverse = tie_curve(SIGNAL, REPORT, np.array([0, 2, 3, 1]))
    assert reverse[-1] == curve[-1] and tied_reverse == [2, 1]  # the order of discovery does not matter


def test_a_better_cell_resets_the_ties() -> None:
    curve, tied = tie_curve(SIGNAL, REPORT, np.array([1, 2, 5, 4]))
    assert curve[-1] == 99.0 and tied == [5]


def test_cap_mode_ties_only_feasible_cells() -> None:
    feasible = np.array([True, True, False, True, True, False])
    curve, tied = tie_curve(SIGNAL, REPORT, np.array([3, 2, 1, 5, 4]), feasible)
    assert curve == pytest.approx((40.0, 40.0, 72.28, 72.28, (72.28 + 80.0) / 2)) and tied == [1, 4]
    curve, tied = tie_curve(SIGNAL, REPORT, np.array([2, 5]), feasible)
    assert all(math.isnan(x) for x in curve) and tied == []


def test_exhaustive_reference_is_scored_by_the_same_rule() -> None:
    value, tied = exhaustive(SIGNAL, REPORT)
    assert value == 99.0 and tied.tolist() == [5]
    value, tied = exhaustive(SIGNAL, REPORT, SIGNAL < 65)
    assert value == pytest.approx((72.28 + 73.09 + 80.0) / 3) and tied.tolist() == [1, 2, 4]
    # a run that evaluates every cell gets the reference's score
    assert tie_curve(SIGNAL, REPORT, np.arange(6), SIGNAL < 65)[0][-1] == pytest.approx(value)
    assert math.isnan(exhaustive(SIGNAL, REPORT, np.zeros(6, bool))[0])


def test_the_rounding_ties_equal_image_counts_on_the_real_tables(tmp_path) -> None:
    """4 decimals puts float32 values of equal counts together and keeps different counts apart: the classes
    are those of the data's own step (0.002 %, 0.02 % and 1/30 % of the validation images)."""
    table = load_nb201(shared_data("nasbench201"), cache_dir=tmp_path)
    steps = {"cifar10": 0.002, "cifar100": 0.02, "imagenet16-120": 100 / 3000}
    for ds, step in steps.items():
        raw = table.val12[ds]
        counts = np.round(raw / step).astype(int)
        assert np.abs(raw - counts * step).max() < 1e-4  # every value is a whole number of steps
        signal = search_signal(raw)
        pairs = np.unique(np.stack([signal, counts]), axis=1).shape[1]
        assert pairs == np.unique(signal).size == np.unique(counts).size
    # the CIFAR-100 tie of the issue: different float32 values, equal counts, one signal value
    c100 = table.val12["cifar100"]
    assert c100[10165] != c100[13714] and search_signal(c100)[10165] == search_signal(c100)[13714] == 61.32
    value, tied = exhaustive(search_signal(c100), table.test200["cifar100"])
    assert tied.tolist() == [10165, 13714] and round(value, 2) == 72.69
