"""Few-shot supernets: one supernet per value of one space-wide decision (``supernet.split``).

Zhao et al. (Few-shot Neural Architecture Search, ICML 2021) split a one-shot supernet into sub-supernets
along one decision, so that subnets which differ in it stop sharing (and fighting over) weights. Here each
part is an ordinary :class:`~llmnas.supernet.model.SuperNet` of the whole space, trained only on the subnets
that take its value and saved in its own folder; :class:`SplitSuperNet` routes each architecture to its part
and is called like a :class:`SuperNet` (``check``, ``forward(idx, arch)``, ``extract``).

A split supernet folder::

    split.json                  format, the decision, its values and the folder of each
    <decision>-<value>/         an ordinary supernet folder (``latest``, ``checkpoint-<step>/``)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmnas.errors import ArchitectureError, RecipeError
from llmnas.export.checkpoint import CheckpointError
from llmnas.space.arch import Architecture
from llmnas.space.transformer import TransformerSpace
from llmnas.supernet.config import SPLIT_DECISIONS

SPLIT_FORMAT = "llmnas.supernet-split/1"
MANIFEST = "split.json"


def decision_value(arch: Architecture, decision: str) -> Any:
    """The value ``arch`` takes for one of :data:`SPLIT_DECISIONS`."""
    if decision == "n_layers":
        return len(arch.blocks)
    if decision in SPLIT_DECISIONS:
        return getattr(arch, decision)
    raise ValueError(f"{decision!r} is not a decision a supernet can be split on ({', '.join(SPLIT_DECISIONS)})")


def split_values(space: TransformerSpace, decision: str, key: str = "supernet.split",
                 fixed: dict[str, Any] | None = None) -> list[Any]:
    """The values of ``decision`` that some architecture meeting the space's constraints takes, in the
    space's order.

    Raises:
        RecipeError: the space does not choose ``decision`` (one fixed value, or not one of its decisions).
    """
    options = space.choices().get(decision)
    if options is None or len(options) < 2:
        chosen = [d for d in SPLIT_DECISIONS if len(space.choices().get(d, ())) > 1]
        raise RecipeError(
            f"{key}={decision!r}: space {space.name!r} does not choose {decision} (it is fixed or absent "
            f"there); pick one of the decisions it chooses: {', '.join(chosen) or '(none)'}"
        )
    return feasible_values(space, decision, fixed)


def feasible_values(space: TransformerSpace, decision: str, fixed: dict[str, Any] | None = None) -> list[Any]:
    """The values of ``decision`` that some architecture meeting the constraints (with ``fixed``) takes."""
    return [v for v in space.choices()[decision]
            if feasible_draw(space, {**(fixed or {}), decision: v}, rng=0) is not None]


def feasible_draw(space: TransformerSpace, fixed: dict[str, Any], *, tries: int = 20_000,
                  rng: Any = None) -> dict[str, Any] | None:
    """Random decisions with the ``fixed`` ones set that meet the space's constraints (uniform over the part
    of the space that takes those values: the other decisions uniform, rejected until feasible), or ``None``
    after ``tries`` draws."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    free = [(name, options) for name, options in space.choices().items() if name not in fixed]
    for _ in range(tries):
        params = {**{name: options[int(rng.integers(len(options)))] for name, options in free}, **fixed}
        if space.is_feasible(params):
            return params
    return None


def by_part(values: list[Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """One dict of the parts' figures (losses, scores), each key prefixed with its part's value: ``rope/largest``."""
    return {f"{v}/{k}": x for v, r in zip(values, records, strict=True) for k, x in r.items()}


def part_folder(decision: str, value: Any) -> str:
    """The folder name of one part: ``pos-rope``, ``d_model-128``, ``tie_embeddings-true``."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{decision}-{text}"


def write_manifest(out: Path, decision: str, values: list[Any]) -> None:
    """``split.json`` (atomically): what the folder holds, written before any part is trained."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"format": SPLIT_FORMAT, "decision": decision, "values": values,
              "parts": {str(v): part_folder(decision, v) for v in values}}
    path = out / MANIFEST
    if path.exists():
        stored = read_manifest(out)
        if stored["decision"] != decision or [str(v) for v in stored["values"]] != [str(v) for v in values]:
            raise RecipeError(
                f"{path}: this folder holds a supernet split on {stored['decision']!r} "
                f"({', '.join(map(str, stored['values']))}); the recipe splits on {decision!r} "
                f"({', '.join(map(str, values))}): train into another folder (--out, or supernet.out)"
            )
        return
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def read_manifest(location: Path) -> dict[str, Any]:
    path = location / MANIFEST
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}): the split supernet's record is corrupted") from None
    if not isinstance(record, dict) or record.get("format") != SPLIT_FORMAT:
        raise CheckpointError(f"{path}: not a {SPLIT_FORMAT} record (format {record.get('format')!r})")
    missing = [k for k in ("decision", "values", "parts") if k not in record]
    if missing or record["decision"] not in SPLIT_DECISIONS:
        raise CheckpointError(f"{path}: incomplete or unknown split record (missing {missing or 'nothing'}, "
                              f"decision {record.get('decision')!r})")
    return record


def is_split(location: str | Path) -> bool:
    return (Path(location) / MANIFEST).is_file()


class SplitSuperNet(nn.Module):
    """Several supernets of one space, one per value of ``decision``; every call goes to the part of the
    architecture's value (the same interface as :class:`~llmnas.supernet.model.SuperNet`)."""

    def __init__(self, decision: str, parts: dict[Any, nn.Module]) -> None:
        super().__init__()
        self.decision = decision
        self.values = list(parts)
        self.parts = nn.ModuleDict({str(v): net for v, net in parts.items()})
        first = next(iter(parts.values()))
        self.space, self.dims, self.dropout = first.space, first.dims, first.dropout

    def part(self, arch: Architecture) -> nn.Module:
        """The supernet that holds ``arch``'s weights.

        Raises:
            ArchitectureError: ``arch`` takes a value of the split decision that no part was trained on.
        """
        value = decision_value(arch, self.decision)
        if str(value) not in self.parts:
            raise ArchitectureError(
                f"{self.decision}={value!r}: this supernet is split on {self.decision} and holds parts for "
                f"{', '.join(map(str, self.values))} only"
            )
        return self.parts[str(value)]

    def check(self, arch: Architecture) -> None:
        self.part(arch).check(arch)

    def weights(self, arch: Architecture) -> dict[str, torch.Tensor]:
        return self.part(arch).weights(arch)

    def forward(self, idx: torch.Tensor, arch: Architecture, targets: torch.Tensor | None = None) -> Any:
        return self.part(arch)(idx, arch, targets)

    def extract(self, arch: Architecture) -> nn.Module:
        return self.part(arch).extract(arch)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
