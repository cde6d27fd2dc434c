"""The shape of a supernet: the largest size of every weight over the architectures of one space.

A :class:`SupernetDims` is derived from a :class:`~llmnas.space.TransformerSpace` by enumerating the
attentions and FFNs each layer may have at each model width (``TransformerSpace.block_sets``), so it is
exact whatever the space declares (``head_dim: auto`` or fixed, ``ffn_mult`` or ``ffn_hidden``, experts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from llmnas.errors import ArchitectureError, SpaceError
from llmnas.space.arch import Architecture, MoEFFN
from llmnas.space.transformer import Constraints, TransformerSpace


@dataclass(frozen=True)
class SupernetDims:
    """Largest sizes over a space, and which optional weights its architectures need.

    Attributes:
        q_dim, kv_dim: widest query and key/value projections (heads x head width).
        ffn_hidden: widest dense FFN (0: the space has no dense FFN).
        n_experts, expert_hidden, shared_hidden: largest MoE layer (0: the space has no MoE).
        gate: some FFN is SwiGLU, so gate weights exist beside the up projections.
        learned_pos: some architecture has a learned position table.
        untied: some architecture has an output head of its own.
    """

    vocab_size: int
    max_seq_len: int
    d_model: int
    n_layers: int
    q_dim: int
    kv_dim: int
    ffn_hidden: int
    n_experts: int
    expert_hidden: int
    shared_hidden: int
    gate: bool
    learned_pos: bool
    untied: bool

    @classmethod
    def of(cls, space: TransformerSpace) -> SupernetDims:
        g = space.global_choices
        attn, ffn = set(), set()
        for d in g["d_model"]:
            a, f = space.block_sets(int(d), {})
            attn |= a
            ffn |= f
        dense = [f for f in ffn if not isinstance(f, MoEFFN)]
        moe = [f for f in ffn if isinstance(f, MoEFFN)]
        return cls(
            vocab_size=space.vocab_size,
            max_seq_len=space.max_seq_len,
            d_model=int(max(g["d_model"])),
            n_layers=int(max(g["n_layers"])),
            q_dim=max(a.q_dim for a in attn),
            kv_dim=max(a.kv_dim for a in attn),
            ffn_hidden=max((f.hidden for f in dense), default=0),
            n_experts=max((f.n_experts for f in moe), default=0),
            expert_hidden=max((f.expert_hidden for f in moe), default=0),
            shared_hidden=max((f.shared_expert_hidden for f in moe), default=0),
            gate=any(f.activation == "swiglu" for f in ffn),
            learned_pos="learned" in g["pos"],
            untied=False in g["tie_embeddings"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def space_record(space: TransformerSpace) -> dict[str, Any]:
    """What defines a supernet's weights: the space's choices, vocabulary and block size (its constraints
    only change which architectures are sampled, and are recorded beside it)."""
    d = space.describe()
    return {k: d[k] for k in ("name", "vocab_size", "max_seq_len", "global", "layer", "uniform")}


def space_id(space: TransformerSpace) -> str:
    text = json.dumps(space_record(space), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def space_from_record(record: dict[str, Any], constraints: dict[str, Any] | None = None,
                      source: str = "<checkpoint>") -> TransformerSpace:
    """Rebuild the space a supernet checkpoint was trained on (JSON lists back to choice tuples)."""
    return TransformerSpace(
        name=record["name"],
        vocab_size=record["vocab_size"],
        max_seq_len=record["max_seq_len"],
        global_choices={k: tuple(v) for k, v in record["global"].items()},
        layer_choices={k: tuple(v) for k, v in record["layer"].items()},
        uniform=tuple(record["uniform"]),
        constraints=Constraints(**(constraints or {})),
        source=source,
    )


def check_member(space: TransformerSpace, arch: Architecture, where: str) -> None:
    """Raise :class:`ArchitectureError` unless ``arch`` is an architecture of ``space`` (so a slice of its
    supernet); ``where`` names the supernet in the message."""
    if arch.vocab_size != space.vocab_size or arch.max_seq_len != space.max_seq_len:
        raise ArchitectureError(
            f"architecture {arch.id} has vocab_size={arch.vocab_size}, max_seq_len={arch.max_seq_len}; the supernet "
            f"{where} was built for vocab_size={space.vocab_size}, max_seq_len={space.max_seq_len}"
        )
    try:
        space.encode(arch)
    except SpaceError as e:
        raise ArchitectureError(
            f"architecture {arch.id} is not in the space {space.name!r} of the supernet {where}: {e}"
        ) from None
