"""A linear calibration of the supernet's inherited-weight loss against training from scratch.

A weight-shared supernet's inherited loss is a biased estimate of what an architecture reaches when trained
alone, and the bias is not the same everywhere: on tiny-shakespeare, deep narrow subnets inherit weights that
serve them worse than shallow wide ones, so the supernet ranks them too low (``eval/supernet``). A
:class:`Calibration` maps the inherited loss, the depth and architecture-wide choices (the positional scheme,
say) to a predicted from-scratch loss::

    predicted = intercept + inherited * inherited_loss + per_layer * n_layers + offsets[decision][value]

:func:`fit` fits it by least squares to architectures whose from-scratch loss is known (the trials of a
from-scratch search, or a benchmark's truth). A search recipe applies it with ``search.calibration``: each
trial's ``val_loss`` is then the prediction, and ``inherited_val_loss`` the supernet's own measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmnas.errors import RecipeError
from llmnas.space.arch import Architecture

#: Architecture-wide choices a calibration may give an offset per value of.
OFFSET_DECISIONS = ("pos", "norm", "d_model")
KEYS = ("intercept", "inherited", "per_layer", "offsets")


def _value(arch: Architecture, decision: str) -> str:
    return str(getattr(arch, decision))


@dataclass(frozen=True)
class Calibration:
    """``predicted = intercept + inherited * loss + per_layer * n_layers + offsets[decision][value]``."""

    intercept: float
    inherited: float
    """Slope on the inherited loss; positive, so the calibrated score still grows with it."""
    per_layer: float = 0.0
    offsets: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per architecture-wide decision (``pos``, ``norm``, ``d_model``): an offset for every value it takes."""

    def predict(self, arch: Architecture, inherited_loss: float) -> float:
        """The predicted from-scratch loss of ``arch`` whose inherited-weight loss is ``inherited_loss``.

        Raises:
            RecipeError: an offset decision without an entry for ``arch``'s value (named, with those it has).
        """
        out = self.intercept + self.inherited * inherited_loss + self.per_layer * len(arch.blocks)
        for decision, table in self.offsets.items():
            value = _value(arch, decision)
            if value not in table:
                raise RecipeError(
                    f"search.calibration.offsets.{decision}: no offset for {value!r} (architecture {arch.id}; it "
                    f"has {', '.join(table)}): a calibration gives every value of the decision, 0 for the reference"
                )
            out += table[value]
        return float(out)

    def check(self, choices: dict[str, Sequence[Any]], where: str = "search.calibration") -> None:
        """Raise :class:`RecipeError` unless every offset decision has an entry for each value ``choices`` (a
        space's :meth:`choices`) gives it: an architecture the search may suggest would have no offset."""
        for decision, table in self.offsets.items():
            missing = [str(v) for v in choices.get(decision, ()) if str(v) not in table]
            if missing:
                raise RecipeError(
                    f"{where}.offsets.{decision}: no offset for {', '.join(map(repr, missing))} (the space's values: "
                    f"{', '.join(map(str, choices[decision]))}): give every value, 0 for the reference"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "inherited": self.inherited, "per_layer": self.per_layer,
                "offsets": {d: dict(t) for d, t in self.offsets.items()}}

    @classmethod
    def from_dict(cls, values: Any, where: str = "search.calibration") -> Calibration:
        """Read a calibration mapping (a recipe's ``search.calibration``).

        Raises:
            RecipeError: not a mapping, an unknown key, a missing or non-finite number, a non-positive
                ``inherited`` slope, or an offset decision outside :data:`OFFSET_DECISIONS` (each named
                with ``where``).
        """
        if not isinstance(values, dict):
            raise RecipeError(f"{where}={values!r}: must be a mapping with keys {', '.join(KEYS)}")
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(KEYS)})")
        for key in ("intercept", "inherited"):
            if key not in values:
                raise RecipeError(f"{where}.{key}: missing (a calibration needs intercept and inherited)")
        numbers = {key: _number(values.get(key, 0.0), f"{where}.{key}") for key in KEYS[:3]}
        if numbers["inherited"] <= 0:
            raise RecipeError(
                f"{where}.inherited={numbers['inherited']!r}: must be positive (the calibrated loss must grow "
                "with the supernet's own)"
            )
        offsets = values.get("offsets") or {}
        if not isinstance(offsets, dict):
            raise RecipeError(f"{where}.offsets={offsets!r}: must be a mapping decision -> {{value: offset}}")
        tables = {}
        for decision, table in offsets.items():
            if decision not in OFFSET_DECISIONS:
                raise RecipeError(
                    f"{where}.offsets: {decision!r} is not allowed (allowed: {', '.join(OFFSET_DECISIONS)})"
                )
            if not isinstance(table, dict) or not table:
                raise RecipeError(f"{where}.offsets.{decision}={table!r}: must be a non-empty mapping value -> offset")
            tables[decision] = {str(v): _number(o, f"{where}.offsets.{decision}.{v}") for v, o in table.items()}
        return cls(numbers["intercept"], numbers["inherited"], numbers["per_layer"], tables)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecipeError(f"{where}={value!r}: must be a finite number")
    return float(value)


def fit(archs: Sequence[Architecture], inherited: Sequence[float], truth: Sequence[float],
        offsets: Sequence[str] = ("pos",), per_layer: bool = True) -> Calibration:
    """Least-squares fit of the from-scratch losses ``truth`` on the inherited losses, the depth (with
    ``per_layer``) and one offset per value of each decision in ``offsets`` (the first value, sorted, is the
    reference at 0).

    Raises:
        ValueError: fewer architectures than coefficients, lengths that differ, or a fit whose slope on the
            inherited loss is not positive (the supernet's loss carries no usable signal for these).
    """
    if not len(archs) == len(inherited) == len(truth):
        raise ValueError(f"fit: {len(archs)} architectures, {len(inherited)} inherited and {len(truth)} true losses")
    for d in offsets:
        if d not in OFFSET_DECISIONS:
            raise ValueError(f"fit: offsets: {d!r} is not allowed (allowed: {', '.join(OFFSET_DECISIONS)})")
    levels = {d: sorted({_value(a, d) for a in archs}) for d in offsets}
    columns = [np.ones(len(archs)), np.asarray(inherited, float)]
    if per_layer:
        columns.append(np.array([len(a.blocks) for a in archs], float))
    for d in offsets:
        columns += [np.array([_value(a, d) == v for a in archs], float) for v in levels[d][1:]]
    x = np.stack(columns, axis=1)
    if len(archs) <= x.shape[1]:
        raise ValueError(f"fit: {len(archs)} architectures for {x.shape[1]} coefficients; give more")
    w = np.linalg.lstsq(x, np.asarray(truth, float), rcond=None)[0]
    if not w[1] > 0:
        raise ValueError(f"fit: the slope on the inherited loss is {w[1]:.4g}, not positive: the supernet's "
                         "losses do not track these from-scratch losses")
    i = 3 if per_layer else 2
    tables = {}
    for d in offsets:
        tables[d] = {levels[d][0]: 0.0}
        for v in levels[d][1:]:
            tables[d][v], i = float(w[i]), i + 1
    return Calibration(float(w[0]), float(w[1]), float(w[2]) if per_layer else 0.0, tables)
