"""Whether any architecture of a transformer space meets its hard constraints, decided before sampling.

Every measured quantity (parameters, active parameters, non-embedding parameters, FLOPs and KV-cache
bytes per token) is a sum: a part fixed by the global decisions (width, depth, positions, norm,
tied embeddings) plus one term per layer, and each layer's term is its attention's plus its FFN's. So
within one *group* (one assignment of the global decisions and of the ``uniform`` keys) an
architecture of ``n`` layers measures ``base + sum of n block terms``, each block chosen freely.

- The exact range of every quantity over the space follows at once: ``base + n * (min attention term
  + min FFN term)``, and likewise for the maximum (:meth:`Feasibility.ranges`).
- Whether all limits can be met together is a search over sums of ``n`` block vectors. It is done
  exactly, depth by depth, over the distinct reachable partial sums, dropping sums that can no longer
  meet a limit and sums dominated by another; it stops being exhaustive only when the reachable sums
  outgrow :data:`MAX_STATES` (never for the shipped spaces), and then random draws look for a witness.

:meth:`TransformerSpace.check_feasible <llmnas.space.transformer.TransformerSpace.check_feasible>` raises
:class:`~llmnas.errors.SpaceError` when no architecture meets the limits, saying which limit cannot be met
and the range the space allows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from llmnas.errors import SpaceError
from llmnas.space.arch import Architecture, BlockSpec

if TYPE_CHECKING:
    from llmnas.space.transformer import TransformerSpace

QUANTITIES = ("params", "active_params", "non_embedding_params", "flops_per_token", "kv_cache_bytes_per_token")
#: Most distinct partial sums kept per depth before the exact search gives way to random draws.
MAX_STATES = 50_000
#: Random draws that look for a witness when the exact search was not exhaustive.
RANDOM_DRAWS = 2000


@dataclass(frozen=True)
class Group:
    """Architectures that share their global decisions and uniform keys: ``base + sum of block terms``.

    ``attn_terms[a] + ffn_terms[f]`` is what one layer with attention ``attn[a]`` and FFN ``ffn[f]`` adds
    to each quantity (columns in the order of :data:`QUANTITIES`).
    """

    top: dict[str, Any]
    depths: tuple[int, ...]
    base: np.ndarray
    attn: list
    ffn: list
    attn_terms: np.ndarray
    ffn_terms: np.ndarray

    def arch(self, blocks: list[BlockSpec]) -> Architecture:
        return Architecture(blocks=tuple(blocks), **self.top)


@dataclass(frozen=True)
class Feasibility:
    """What the constraints leave of a space.

    Attributes:
        ranges: exact ``(min, max)`` of every quantity over the whole space (constraints ignored).
        witness: an architecture that meets every limit, or ``None``.
        exhaustive: whether the search for a witness covered every architecture (so ``witness is None``
            proves that none meets the limits).
    """

    ranges: dict[str, tuple[int, int]]
    witness: Architecture | None
    exhaustive: bool


def groups(space: TransformerSpace) -> list[Group]:
    """The space split into groups, with each group's fixed part and per-layer terms (measured, not re-derived)."""
    keys = [k for k in space.global_choices if k != "n_layers"]
    depths = tuple(sorted(int(n) for n in space.global_choices["n_layers"]))  # type: ignore[call-overload]
    out = []
    for combo in itertools.product(*(space.global_choices[k] for k in keys)):
        g = dict(zip(keys, combo, strict=True))
        if g["pos"] != "rope" and g["rope_base"] != space.global_choices["rope_base"][0]:
            continue  # rope_base means nothing without RoPE: the same architectures as the first rope_base
        top = {"vocab_size": space.vocab_size, "max_seq_len": space.max_seq_len, "d_model": g["d_model"],
               "norm": g["norm"], "norm_eps": float(g["norm_eps"]), "pos": g["pos"],
               "rope_base": float(g["rope_base"]), "tie_embeddings": g["tie_embeddings"]}
        for u in itertools.product(*(space.layer_choices[k] for k in space.uniform)):
            attn, ffn = space.block_sets(g["d_model"], dict(zip(space.uniform, u, strict=True)))
            out.append(_group(space.constraints.measure, top, depths, sorted(attn, key=repr), sorted(ffn, key=repr)))
    return out


def _group(
    measure: Callable[[Architecture], dict[str, int]], top: dict[str, Any], depths: tuple[int, ...], attn: list,
    ffn: list,
) -> Group:
    # quantities are linear in the layers: q(one layer of b) - q(two layers of b) gives base and b's term
    a0, f0 = attn[0], ffn[0]

    def one(a: Any, f: Any, n: int = 1) -> np.ndarray:
        m = measure(Architecture(blocks=(BlockSpec(a, f),) * n, **top))
        return np.array([m[q] for q in QUANTITIES], dtype=np.int64)

    q1 = one(a0, f0)
    base = 2 * q1 - one(a0, f0, 2)
    attn_terms = np.stack([one(a, f0) - base for a in attn])  # includes f0's term and the layer's norms
    ffn_terms = np.stack([one(a0, f) - base - attn_terms[0] for f in ffn])  # relative to f0 (0 for f0)
    return Group(top, depths, base, attn, ffn, attn_terms, ffn_terms)


def ranges(gs: list[Group]) -> dict[str, tuple[int, int]]:
    """Exact ``(min, max)`` of each quantity over all groups and depths."""
    lo = np.full(len(QUANTITIES), np.iinfo(np.int64).max)
    hi = np.full(len(QUANTITIES), np.iinfo(np.int64).min)
    for g in gs:
        block_lo = g.attn_terms.min(0) + g.ffn_terms.min(0)
        block_hi = g.attn_terms.max(0) + g.ffn_terms.max(0)
        for n in g.depths:
            lo = np.minimum(lo, g.base + n * block_lo)
            hi = np.maximum(hi, g.base + n * block_hi)
    return {q: (int(lo[i]), int(hi[i])) for i, q in enumerate(QUANTITIES)}


def feasibility(space: TransformerSpace) -> Feasibility:
    """Exact ranges of the quantities and, when one exists, an architecture that meets every limit."""
    gs = groups(space)
    limits = space.constraints.limits()
    exhaustive = True
    for g in gs:
        for n in g.depths:
            found, complete = _search(g, n, limits)
            if found is not None:
                return Feasibility(ranges(gs), found, True)
            exhaustive &= complete
    witness = None if exhaustive else _random_witness(space)
    return Feasibility(ranges(gs), witness, exhaustive)


def _search(g: Group, n: int, limits: list[tuple[str, str, int]]) -> tuple[Architecture | None, bool]:
    """An architecture of ``g`` with ``n`` layers meeting ``limits``; and whether the search was exhaustive."""
    dims = sorted({QUANTITIES.index(q) for q, _, _ in limits})
    if not dims:
        return g.arch([BlockSpec(g.attn[0], g.ffn[0])] * n), True
    lower = np.full(len(dims), -np.inf)
    upper = np.full(len(dims), np.inf)
    for q, kind, bound in limits:
        j = dims.index(QUANTITIES.index(q))
        if kind == "min":
            lower[j] = max(lower[j], bound - g.base[QUANTITIES.index(q)])
        else:
            upper[j] = min(upper[j], bound - g.base[QUANTITIES.index(q)])
    # the distinct block vectors (restricted to the limited quantities), each with one (attention, FFN) pair
    pairs = list(itertools.product(range(len(g.attn)), range(len(g.ffn))))
    vectors = np.array([g.attn_terms[a, dims] + g.ffn_terms[f, dims] for a, f in pairs])
    vectors, first = np.unique(vectors, axis=0, return_index=True)
    keep = _undominated(vectors, lower, upper)
    vectors, reps = vectors[keep], [pairs[i] for i in first[keep]]
    vmin, vmax = vectors.min(0), vectors.max(0)
    sums = np.zeros((1, len(dims)), dtype=np.int64)
    trail: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: each sum's parent and its block
    for i in range(n):
        left = n - i - 1
        grown = (sums[:, None, :] + vectors[None, :, :]).reshape(-1, len(dims))
        # later layers add at least vmin and at most vmax: drop sums that can no longer fit
        fits = np.all(grown + left * vmin <= upper, axis=1) & np.all(grown + left * vmax >= lower, axis=1)
        index = np.flatnonzero(fits)
        if not len(index):
            return None, True
        _, first = np.unique(grown[index], axis=0, return_index=True)
        index = index[first]
        index = index[_undominated(grown[index], lower, upper)]
        if len(index) > MAX_STATES:
            return None, False
        sums = grown[index]
        trail.append(np.divmod(index, len(vectors)))
    k, path = 0, []
    for parents, blocks in reversed(trail):
        path.append(int(blocks[k]))
        k = int(parents[k])
    blocks = [BlockSpec(g.attn[reps[j][0]], g.ffn[reps[j][1]]) for j in reversed(path)]
    return g.arch(blocks), True


def _undominated(points: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats: at most as large where only a maximum applies, at least as
    large where only a minimum applies, equal where both apply (either one can stand for the other)."""
    if len(points) > 4000:  # quadratic; large sets are kept whole (still exact, only slower)
        return np.ones(len(points), dtype=bool)
    only_max = np.isfinite(upper) & ~np.isfinite(lower)
    only_min = np.isfinite(lower) & ~np.isfinite(upper)
    both = ~only_max & ~only_min
    p, q = points[:, None, :], points[None, :, :]  # q beats p?
    beats = (
        np.all((q <= p) | ~only_max, axis=2) & np.all((q >= p) | ~only_min, axis=2) & np.all((q == p) | ~both, axis=2)
    )
    strictly = beats & ~np.all(q == p, axis=2)
    return ~strictly.any(axis=1)


def _random_witness(space: TransformerSpace) -> Architecture | None:
    rng = np.random.default_rng(0)
    choices = space.choices()
    for _ in range(RANDOM_DRAWS):
        params = {name: ch[int(rng.integers(len(ch)))] for name, ch in choices.items()}
        if space.is_feasible(params):
            return space.decode(params)
    return None


def explain(space: TransformerSpace, result: Feasibility, where: str) -> SpaceError:
    """The error for a space whose limits no architecture meets: the first limit out of reach on its own,
    else all of them together."""
    names = {"min": "min_", "max": "max_"}
    for q, kind, bound in space.constraints.limits():
        lo, hi = result.ranges[q]
        if kind == "max" and lo > bound:
            return SpaceError(
                f"{where}: constraints: max_{q}={bound:,} cannot be met: the smallest architecture of space "
                f"{space.name!r} has {q} {lo:,} (the space spans {lo:,}..{hi:,})"
            )
        if kind == "min" and hi < bound:
            return SpaceError(
                f"{where}: constraints: min_{q}={bound:,} cannot be met: the largest architecture of space "
                f"{space.name!r} has {q} {hi:,} (the space spans {lo:,}..{hi:,})"
            )
    limits = ", ".join(f"{names[kind]}{q}={bound:,}" for q, kind, bound in space.constraints.limits())
    spans = ", ".join(f"{q} {result.ranges[q][0]:,}..{result.ranges[q][1]:,}"
                      for q in dict.fromkeys(q for q, _, _ in space.constraints.limits()))
    how = "none does" if result.exhaustive else f"none was found ({RANDOM_DRAWS} random draws; the space is too " \
        "large to search exhaustively)"
    return SpaceError(
        f"{where}: constraints: no architecture of space {space.name!r} meets {limits} together: {how} "
        f"(each alone: {spans})"
    )
