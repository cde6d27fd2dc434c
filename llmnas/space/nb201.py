"""The NAS-Bench-201 cell space (also NATS-Bench's topology search space, ``tss``).

A cell is a DAG of 4 nodes; node 0 is the cell's input and node 3 its output. Each of the 6 edges
``j -> i`` (``j < i``) carries one operation from ``none, skip_connect, nor_conv_1x1, nor_conv_3x3,
avg_pool_3x3``, so there are 5**6 = 15,625 cells. Optuna sees one categorical parameter per edge,
named after the node it feeds and the node it comes from (``node1.in0``, ``node2.in0``,
``node2.in1``, ``node3.in0``, ``node3.in1``, ``node3.in2``), in the order of the official string.

Three encodings, all exact:

- the official string, ``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|...~1|...~2|``
  (one ``+``-separated group per node, one ``op~source`` per incoming edge);
- Optuna parameters (``{"node1.in0": "nor_conv_3x3", ...}``);
- the official index (the row of the benchmark tables). The benchmark lists the cells in its own,
  shuffled order, so the index needs that list: :class:`~llmnas.benchmarks.nb201.NB201Table` holds
  it and converts (``table.index_of(cell)``, ``table.cell(index)``).

Two cells can compute the same function (an edge out of a node that only receives ``none`` adds
zeros, a ``skip_connect`` followed by an op equals the op on the earlier node, and sums commute).
:meth:`NB201Space.key` identifies them with NAS-Bench-201's own canonical form (``to_unique_str``
with ``consider_zero=True``), so samplers never spend an evaluation on an isomorphic copy; set
``identify_isomorphic: false`` to key cells by their official string instead.

Example:
    >>> space = NB201Space()
    >>> cell = NB201Cell.from_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
    ...                           "+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    >>> space.decode(space.encode(cell)) == cell
    True
    >>> space.size()
    15625
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from llmnas.errors import SpaceError
from llmnas.space.base import CategoricalSpace, Params

KIND = "nasbench201"
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: Edges ``(to_node, from_node)`` in the order of the official string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
PARAM_NAMES = tuple(f"node{i}.in{j}" for i, j in EDGES)
N_CELLS = len(OPS) ** len(EDGES)


@dataclass(frozen=True)
class NB201Cell:
    """One NAS-Bench-201 cell: the operation on each edge, in the order of :data:`EDGES`."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != len(EDGES):
            raise ValueError(f"a NAS-Bench-201 cell has {len(EDGES)} edges, got {len(self.ops)} ops")
        for op in self.ops:
            if op not in OPS:
                raise ValueError(f"unknown NAS-Bench-201 operation {op!r} (allowed: {', '.join(OPS)})")

    @classmethod
    def from_str(cls, arch_str: str) -> NB201Cell:
        """Parse the official string; raises ``ValueError`` naming what is wrong."""
        return cls(_parse_ops(arch_str))

    def to_str(self) -> str:
        """The official string, e.g. ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
        groups, k = [], 0
        for node in (1, 2, 3):
            groups.append("|" + "|".join(f"{self.ops[k + j]}~{j}" for j in range(node)) + "|")
            k += node
        return "+".join(groups)

    @property
    def code(self) -> int:
        """The cell's number in base ``len(OPS)``, edge order as in :data:`EDGES` (not the official index)."""
        n = 0
        for op in self.ops:
            n = n * len(OPS) + OPS.index(op)
        return n

    @classmethod
    def from_code(cls, code: int) -> NB201Cell:
        if not 0 <= code < N_CELLS:
            raise ValueError(f"cell code {code} is outside 0..{N_CELLS - 1}")
        ops = []
        for _ in EDGES:
            code, r = divmod(code, len(OPS))
            ops.append(OPS[r])
        return cls(tuple(reversed(ops)))

    def unique_str(self) -> str:
        """NAS-Bench-201's canonical form of the function the cell computes (isomorphic cells share it)."""
        return _unique_str(self.ops)

    def __str__(self) -> str:
        return self.to_str()


def _parse_ops(arch_str: str) -> tuple[str, ...]:
    if not isinstance(arch_str, str):
        raise ValueError(f"a NAS-Bench-201 architecture string must be a str, got {type(arch_str).__name__}")
    groups = arch_str.split("+")
    if len(groups) != 3:
        raise ValueError(f"{arch_str!r} is not a NAS-Bench-201 string: expected 3 '+'-separated nodes")
    ops: list[str] = []
    for node, group in enumerate(groups, start=1):
        tokens = [t for t in group.split("|") if t]
        if not (group.startswith("|") and group.endswith("|")) or len(tokens) != node:
            raise ValueError(f"{arch_str!r}: node {node} must read '|op~0|...|op~{node - 1}|'")
        for source, token in enumerate(tokens):
            op, sep, src = token.partition("~")
            if not sep or src != str(source):
                raise ValueError(f"{arch_str!r}: expected '<op>~{source}' for node {node}, got {token!r}")
            if op not in OPS:
                raise ValueError(f"{arch_str!r}: unknown operation {op!r} (allowed: {', '.join(OPS)})")
            ops.append(op)
    return tuple(ops)


@cache
def _unique_str(ops: tuple[str, ...]) -> str:
    # NAS-Bench-201 ``Structure.to_unique_str(consider_zero=True)``: '#' is a zero tensor, a skip
    # passes its input's expression through, any other op wraps it; sums are sorted.
    nodes = {0: "0"}
    k = 0
    for node in (1, 2, 3):
        terms = []
        for source in range(node):
            op, x = ops[k], nodes[source]
            k += 1
            if op == "none" or x == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(x)
            else:
                terms.append(f"({x})@{op}")
        nodes[node] = "+".join(sorted(terms))
    return nodes[3]


class NB201Space(CategoricalSpace[NB201Cell]):
    """The NAS-Bench-201 cell space as six categorical decisions (one per edge).

    Args:
        ops: operations allowed on every edge (a subset of :data:`OPS`, kept in the official order).
        identify_isomorphic: key cells by the function they compute (default) rather than by their
            official string, so that samplers never evaluate an isomorphic copy twice.
        name: a name for logs and studies.
    """

    def __init__(
        self, ops: tuple[str, ...] | list[str] = OPS, identify_isomorphic: bool = True, name: str = KIND
    ) -> None:
        unknown = [op for op in ops if op not in OPS]
        if unknown or not ops or len(set(ops)) != len(ops):
            raise ValueError(f"ops must be distinct names from {', '.join(OPS)}, got {list(ops)}")
        self.ops = tuple(op for op in OPS if op in ops)
        self.identify_isomorphic = identify_isomorphic
        self.name = name
        self._choices = {p: self.ops for p in PARAM_NAMES}

    # ------------------------------------------------------------------ CategoricalSpace
    def choices(self) -> dict[str, tuple[str, ...]]:
        return dict(self._choices)

    def decode(self, params: Params) -> NB201Cell:
        try:
            ops = tuple(params[p] for p in PARAM_NAMES)
        except KeyError as e:
            raise ValueError(f"missing NAS-Bench-201 decision {e.args[0]!r}") from None
        for p, op in zip(PARAM_NAMES, ops, strict=True):
            if op not in self.ops:
                raise ValueError(f"{p}={op!r} is not allowed here (allowed: {', '.join(self.ops)})")
        return NB201Cell(ops)  # type: ignore[arg-type]

    def encode(self, candidate: NB201Cell) -> Params:
        return dict(zip(PARAM_NAMES, candidate.ops, strict=True))

    def key(self, params: Params) -> str:
        ops = tuple(params[p] for p in PARAM_NAMES)
        return _unique_str(ops) if self.identify_isomorphic else NB201Cell(ops).to_str()  # type: ignore[arg-type]

    def active(self, params: Params) -> list[str]:
        """Edges whose operation matters: changing it changes :meth:`key` for some allowed op."""
        ops = tuple(params[p] for p in PARAM_NAMES)
        return list(_active(ops, self.ops, self.identify_isomorphic))

    def size(self) -> int:
        return len(self.ops) ** len(EDGES)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": KIND, "identify_isomorphic": self.identify_isomorphic}

    # ------------------------------------------------------------------ conversions
    def params_from_str(self, arch_str: str) -> Params:
        return self.encode(NB201Cell.from_str(arch_str))

    def str_from_params(self, params: Params) -> str:
        return self.decode(params).to_str()

    # ------------------------------------------------------------------ YAML
    @classmethod
    def from_config(cls, data: Any, source: str = "<config>") -> NB201Space:
        """Build the space from a parsed ``search_spaces/nasbench201.yaml``.

        Keys: ``kind: nasbench201`` (required), ``name`` (str), ``description`` (str), ``ops`` (a
        non-empty list of distinct operations, default all five), ``identify_isomorphic`` (bool).

        Raises:
            SpaceError: naming ``source`` and the offending key for an unknown key, a wrong type, an
                unknown operation or an empty list.
        """
        if not isinstance(data, dict):
            raise SpaceError(f"{source}: a NAS-Bench-201 space must be a mapping, got {type(data).__name__}")
        allowed = {"kind": str, "name": str, "description": str, "ops": list, "identify_isomorphic": bool}
        for key in data:
            if key not in allowed:
                raise SpaceError(f"{source}: unknown key {key!r} (allowed: {', '.join(allowed)})")
        for key, typ in allowed.items():
            if key in data and not isinstance(data[key], typ):
                raise SpaceError(
                    f"{source}: {key}={data[key]!r} must be a {typ.__name__}"
                    + (f" of operations from {', '.join(OPS)}" if key == "ops" else "")
                )
        if data.get("kind") != KIND:
            raise SpaceError(f"{source}: kind={data.get('kind')!r} must be {KIND!r}")
        ops = data.get("ops", list(OPS))
        if not ops:
            raise SpaceError(f"{source}: ops must not be empty (allowed: {', '.join(OPS)})")
        for op in ops:
            if op not in OPS:
                raise SpaceError(f"{source}: ops contains unknown operation {op!r} (allowed: {', '.join(OPS)})")
        if len(set(ops)) != len(ops):
            raise SpaceError(f"{source}: ops lists an operation twice: {ops}")
        return cls(tuple(ops), bool(data.get("identify_isomorphic", True)), str(data.get("name", KIND)))


@cache
def _active(ops: tuple[str, ...], allowed: tuple[str, ...], isomorphic: bool) -> tuple[str, ...]:
    if not isomorphic:
        return PARAM_NAMES if len(allowed) > 1 else ()
    base = _unique_str(ops)
    out = []
    for k, name in enumerate(PARAM_NAMES):
        for op in allowed:
            if op != ops[k] and _unique_str((*ops[:k], op, *ops[k + 1 :])) != base:
                out.append(name)
                break
    return tuple(out)
