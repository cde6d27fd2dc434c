"""The linear calibration of inherited-weight losses (:mod:`llmnas.supernet.calibration`): its fit, its
prediction and the errors a recipe's ``search.calibration`` gets. Architectures are real ones of the shipped
``tiny_char`` space."""

from __future__ import annotations

import numpy as np
import pytest

from llmnas.errors import RecipeError
from llmnas.space import load_space
from llmnas.supernet.calibration import Calibration, fit


@pytest.fixture(scope="module")
def archs():
    space = load_space("tiny_char")
    rng = np.random.default_rng(0)
    return [space.sample(rng) for _ in range(60)]


def test_fit_recovers_the_coefficients_of_a_linear_truth(archs) -> None:
    rng = np.random.default_rng(1)
    inherited = rng.uniform(1.8, 2.6, len(archs))
    pos = {"alibi": 0.0, "learned": 0.04, "rope": -0.03}
    truth = [-0.7 + 1.25 * x - 0.01 * len(a.blocks) + pos[a.pos] for a, x in zip(archs, inherited, strict=True)]
    c = fit(archs, inherited, truth)
    assert c.intercept == pytest.approx(-0.7) and c.inherited == pytest.approx(1.25)
    assert c.per_layer == pytest.approx(-0.01)
    assert c.offsets == {"pos": pytest.approx(pos)}  # the first value, sorted, is the reference at 0
    predicted = [c.predict(a, x) for a, x in zip(archs, inherited, strict=True)]
    assert predicted == pytest.approx(truth)
    # a calibration is read back from its own mapping (a recipe's search.calibration) unchanged
    assert Calibration.from_dict(c.to_dict()) == c


def test_fit_without_the_depth_term_or_the_offsets(archs) -> None:
    rng = np.random.default_rng(2)
    inherited = rng.uniform(1.8, 2.6, len(archs))
    truth = 0.3 + 0.9 * inherited + rng.normal(0, 0.01, len(archs))
    c = fit(archs, inherited, truth, offsets=(), per_layer=False)
    assert c.per_layer == 0.0 and c.offsets == {}
    assert c.inherited == pytest.approx(0.9, abs=0.03)
    # with a positive slope and no other term the ranking is the inherited one
    order = np.argsort([c.predict(a, x) for a, x in zip(archs, inherited, strict=True)])
    assert list(order) == list(np.argsort(inherited))


def test_the_depth_term_reorders_deep_and_shallow_architectures(archs) -> None:
    deep = next(a for a in archs if len(a.blocks) >= 6)
    shallow = next(a for a in archs if len(a.blocks) <= 3)
    c = Calibration(0.0, 1.0, per_layer=-0.05)
    # the deep one measures worse with inherited weights, but is predicted better once depth is counted
    assert c.predict(deep, 2.10) < c.predict(shallow, 2.05)
    assert Calibration(0.0, 1.0).predict(deep, 2.10) > Calibration(0.0, 1.0).predict(shallow, 2.05)


def test_fit_refuses_what_it_cannot_fit(archs) -> None:
    inherited = np.linspace(2.0, 2.5, len(archs))
    with pytest.raises(ValueError, match="not positive"):
        fit(archs, inherited, 5.0 - inherited)  # losses that fall as the inherited ones rise
    with pytest.raises(ValueError, match=r"3 architectures for [45] coefficients; give more"):
        fit(archs[:3], inherited[:3], inherited[:3])
    with pytest.raises(ValueError, match="60 architectures, 59 inherited"):
        fit(archs, inherited[:-1], inherited)
    with pytest.raises(ValueError, match="'window' is not allowed"):
        fit(archs, inherited, inherited, offsets=("window",))


def test_a_value_without_an_offset_is_named(archs) -> None:
    c = Calibration(0.0, 1.0, offsets={"pos": {"rope": 0.0}})
    other = next(a for a in archs if a.pos != "rope")
    with pytest.raises(RecipeError, match=rf"offsets.pos: no offset for '{other.pos}'.*it has rope"):
        c.predict(other, 2.0)
    # checked against the space before anything is scored
    with pytest.raises(RecipeError, match=r"offsets.pos: no offset for 'alibi', 'learned' \(the space's values: "
                                          r"rope, alibi, learned\)"):
        c.check(load_space("tiny_char").choices())
    complete = Calibration(0.0, 1.0, offsets={"pos": {"rope": 0, "alibi": 0, "learned": 0}})
    complete.check(load_space("tiny_char").choices())  # every value has one: no error


@pytest.mark.parametrize("values, message", [
    ([1, 2], "must be a mapping with keys intercept, inherited, per_layer, offsets"),
    ({"intercept": 0.0}, r"search.calibration.inherited: missing"),
    ({"intercept": 0.0, "inherited": 1.0, "slope": 2}, r"unknown key\(s\) slope"),
    ({"intercept": 0.0, "inherited": -1.0}, r"inherited=-1.0: must be positive"),
    ({"intercept": "a", "inherited": 1.0}, r"intercept='a': must be a finite number"),
    ({"intercept": 0.0, "inherited": 1.0, "per_layer": float("nan")}, r"per_layer=nan: must be a finite number"),
    ({"intercept": 0.0, "inherited": 1.0, "offsets": {"window": {"8": 0.1}}}, r"'window' is not allowed"),
    ({"intercept": 0.0, "inherited": 1.0, "offsets": {"pos": {}}}, r"offsets.pos=\{\}: must be a non-empty"),
    ({"intercept": 0.0, "inherited": 1.0, "offsets": {"pos": {"rope": True}}}, r"offsets.pos.rope=True"),
])
def test_bad_calibrations_are_named(values, message) -> None:
    with pytest.raises(RecipeError, match=message):
        Calibration.from_dict(values)


def test_offsets_keys_are_read_as_strings(archs) -> None:
    """A YAML mapping of widths has integer keys; the architecture's width is matched as text."""
    c = Calibration.from_dict({"intercept": 0.0, "inherited": 1.0,
                               "offsets": {"d_model": {w: 0.001 * w for w in (64, 96, 128, 160, 192)}}})
    a = archs[0]
    assert c.predict(a, 2.0) == pytest.approx(2.0 + 0.001 * a.d_model)
