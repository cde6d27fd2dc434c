"""The architecture of a decoder-only language model, as data.

An :class:`Architecture` is a frozen, validated dataclass with a stable JSON form and a short id
(a hash of the canonical JSON), so the same architecture is recognised across trials, processes
and files. Every layer has its own :class:`BlockSpec`, so layers may differ in heads, KV heads,
attention window and FFN.

Example:
    >>> arch = Architecture(vocab_size=256, d_model=64, max_seq_len=128,
    ...     blocks=(BlockSpec(AttentionSpec(4, 2, 16), DenseFFN(256, "swiglu")),) * 2)
    >>> arch.id == Architecture.from_json(arch.to_json()).id
    True
    >>> arch.param_counts().total
    139584
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmnas.errors import ArchitectureError

FORMAT = "llmnas.arch/1"
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "alibi", "learned")
ACTIVATIONS = ("gelu", "swiglu", "relu2")
#: Largest value of each size: far above any real model, low enough that a slip (``vocab_size: 1e12``)
#: is a clear error here rather than an allocation attempt when the model is built.
LIMITS = {
    "vocab_size": 1 << 24,
    "d_model": 1 << 16,
    "max_seq_len": 1 << 24,
    "n_layers": 1024,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "head_dim": 4096,
    "window": 1 << 24,
    "hidden": 1 << 20,
    "n_experts": 4096,
    "top_k": 4096,
    "expert_hidden": 1 << 20,
    "shared_expert_hidden": 1 << 20,
}
#: Most parameters an architecture may have (a trillion).
MAX_PARAMS = 10**12


@dataclass(frozen=True)
class AttentionSpec:
    """Self-attention of one layer.

    Attributes:
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads; equal to ``n_heads`` is MHA, 1 is MQA, in between GQA.
            Must divide ``n_heads``.
        head_dim: width of each head; ``n_heads * head_dim`` need not equal the model width.
        window: ``None`` for full causal attention, else sliding-window attention in which each
            token attends to itself and the ``window - 1`` tokens before it.
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    window: int | None = None

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class DenseFFN:
    """A dense feed-forward network: ``down(act(up(x)))``, or ``down(silu(gate(x)) * up(x))`` for SwiGLU."""

    hidden: int
    activation: str = "swiglu"
    kind: str = field(default="dense", init=False)

    def n_params(self, d_model: int) -> int:
        return ffn_params(d_model, self.hidden, self.activation)


@dataclass(frozen=True)
class MoEFFN:
    """A mixture-of-experts FFN with top-k token-choice routing.

    Attributes:
        n_experts: number of routed experts.
        top_k: experts each token is sent to.
        expert_hidden: hidden width of each routed expert.
        activation: activation of every expert (as in :class:`DenseFFN`).
        shared_expert_hidden: hidden width of an always-on shared expert; 0 means none.
        aux_loss_weight: weight of the router load-balancing loss (Switch Transformer form).
    """

    n_experts: int
    top_k: int
    expert_hidden: int
    activation: str = "swiglu"
    shared_expert_hidden: int = 0
    aux_loss_weight: float = 0.01
    kind: str = field(default="moe", init=False)

    def expert_params(self, d_model: int) -> int:
        return ffn_params(d_model, self.expert_hidden, self.activation)

    def n_params(self, d_model: int) -> int:
        shared = (
            ffn_params(d_model, self.shared_expert_hidden, self.activation)
            if self.shared_expert_hidden
            else 0
        )
        return d_model * self.n_experts + self.n_experts * self.expert_params(d_model) + shared


FFNSpec = DenseFFN | MoEFFN


@dataclass(frozen=True)
class BlockSpec:
    """One decoder layer: pre-norm attention then pre-norm FFN, each with a residual connection."""

    attn: AttentionSpec
    ffn: FFNSpec


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of an architecture.

    Attributes:
        total: every parameter (tied embeddings counted once).
        active: parameters used for one token (routed experts not chosen are left out).
        embedding: token embedding, learned position embedding and an untied output head.
        non_embedding: ``total - embedding``.
    """

    total: int
    active: int
    embedding: int
    non_embedding: int


def ffn_params(d_model: int, hidden: int, activation: str) -> int:
    """Weights of a bias-free FFN of the given width."""
    return (3 if activation == "swiglu" else 2) * d_model * hidden


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer LM; validated on construction (raises :class:`ArchitectureError`).

    Attributes:
        vocab_size: size of the token vocabulary.
        d_model: width of the residual stream.
        max_seq_len: longest sequence the model is built for (size of learned position tables).
        blocks: one :class:`BlockSpec` per layer, first layer first.
        norm: ``"rmsnorm"`` or ``"layernorm"`` (bias-free), pre-norm everywhere plus a final norm.
        norm_eps: epsilon of every norm.
        pos: positional scheme: ``"rope"``, ``"alibi"`` or ``"learned"`` absolute positions.
        rope_base: RoPE base (theta); ignored unless ``pos == "rope"``.
        tie_embeddings: share the token embedding with the output head.
    """

    vocab_size: int
    d_model: int
    max_seq_len: int
    blocks: tuple[BlockSpec, ...]
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    pos: str = "rope"
    rope_base: float = 10000.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.pos != "rope":
            # rope_base means nothing without RoPE: normalise it so equal models get equal ids.
            object.__setattr__(self, "rope_base", 10000.0)
        problems = self.problems()
        if problems:
            raise ArchitectureError(problems)

    # ------------------------------------------------------------------ validation
    def problems(self) -> list[str]:
        """Every rule this architecture violates, one message each (empty when valid)."""
        p: list[str] = []

        def positive_int(name: str, value: Any, where: str = "") -> bool:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                p.append(f"{where}{name}={value!r} must be a positive integer")
                return False
            limit = LIMITS[name.removeprefix("ffn.")]
            if value > limit:
                p.append(f"{where}{name}={value:,} is too large (at most {limit:,})")
                return False
            return True

        for name in ("vocab_size", "d_model", "max_seq_len"):
            positive_int(name, getattr(self, name))
        if self.norm not in NORMS:
            p.append(f"norm={self.norm!r} must be one of {', '.join(NORMS)}")
        if self.pos not in POSITIONS:
            p.append(f"pos={self.pos!r} must be one of {', '.join(POSITIONS)}")
        if not (isinstance(self.norm_eps, float) and 0 < self.norm_eps < 1):
            p.append(f"norm_eps={self.norm_eps!r} must be a float in (0, 1)")
        if not (isinstance(self.rope_base, float) and self.rope_base > 1):
            p.append(f"rope_base={self.rope_base!r} must be a float > 1")
        if not isinstance(self.tie_embeddings, bool):
            p.append(f"tie_embeddings={self.tie_embeddings!r} must be true or false")
        if not self.blocks:
            p.append("blocks must list at least one layer")
        if len(self.blocks) > LIMITS["n_layers"]:
            p.append(f"{len(self.blocks):,} layers is too many (at most {LIMITS['n_layers']:,})")
        for i, block in enumerate(self.blocks):
            where = f"layer {i}: "
            if not isinstance(block, BlockSpec):
                p.append(f"{where}expected a BlockSpec, got {type(block).__name__}")
                continue
            a = block.attn
            ok = all(
                [
                    positive_int("n_heads", a.n_heads, where),
                    positive_int("n_kv_heads", a.n_kv_heads, where),
                    positive_int("head_dim", a.head_dim, where),
                ]
            )
            if ok and a.n_heads % a.n_kv_heads:
                p.append(f"{where}n_kv_heads={a.n_kv_heads} must divide n_heads={a.n_heads}")
            if ok and self.pos == "rope" and a.head_dim % 2:
                p.append(f"{where}head_dim={a.head_dim} must be even with RoPE")
            window_ok = a.window is not None and positive_int("window", a.window, where)
            if window_ok and isinstance(self.max_seq_len, int) and a.window >= self.max_seq_len:
                p.append(
                    f"{where}window={a.window} must be < max_seq_len={self.max_seq_len} "
                    "(a window that covers the whole sequence is full attention: use window=null)"
                )
            f = block.ffn
            if isinstance(f, DenseFFN):
                positive_int("ffn.hidden", f.hidden, where)
            elif isinstance(f, MoEFFN):
                if positive_int("ffn.n_experts", f.n_experts, where) and f.n_experts < 2:
                    p.append(f"{where}ffn.n_experts={f.n_experts} must be at least 2 (use a dense FFN)")
                top_k_ok = positive_int("ffn.top_k", f.top_k, where) and isinstance(f.n_experts, int)
                if top_k_ok and f.top_k > f.n_experts:
                    p.append(f"{where}ffn.top_k={f.top_k} must be <= n_experts={f.n_experts}")
                positive_int("ffn.expert_hidden", f.expert_hidden, where)
                sh = f.shared_expert_hidden
                if isinstance(sh, bool) or not isinstance(sh, int) or sh < 0:
                    p.append(
                        f"{where}ffn.shared_expert_hidden={sh!r} must be an int >= 0 (0: no shared expert)"
                    )
                elif sh:
                    positive_int("ffn.shared_expert_hidden", sh, where)
                if not (isinstance(f.aux_loss_weight, float) and f.aux_loss_weight >= 0):
                    p.append(f"{where}ffn.aux_loss_weight={f.aux_loss_weight!r} must be a float >= 0")
            else:
                p.append(f"{where}ffn must be DenseFFN or MoEFFN, got {type(f).__name__}")
                continue
            if f.activation not in ACTIVATIONS:
                p.append(f"{where}ffn.activation={f.activation!r} must be one of {', '.join(ACTIVATIONS)}")
        if not p and (total := self.param_counts().total) > MAX_PARAMS:
            p.append(f"{total:,} parameters is too many (at most {MAX_PARAMS:,})")
        return p

    # ------------------------------------------------------------------ shape helpers
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def is_moe(self) -> bool:
        return any(isinstance(b.ffn, MoEFFN) for b in self.blocks)

    @property
    def is_homogeneous(self) -> bool:
        return all(b == self.blocks[0] for b in self.blocks)

    def replace(self, **changes: Any) -> Architecture:
        """A copy with some top-level fields changed (validated again)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Architecture(**values)

    # ------------------------------------------------------------------ accounting
    def param_counts(self) -> ParamCounts:
        """Parameter counts computed from the spec alone (equal to the built model's)."""
        d = self.d_model
        embedding = self.vocab_size * d
        if self.pos == "learned":
            embedding += self.max_seq_len * d
        if not self.tie_embeddings:
            embedding += self.vocab_size * d
        body = d  # final norm
        inactive = 0
        for b in self.blocks:
            a = b.attn
            body += 2 * d  # two norms
            body += d * a.q_dim + 2 * d * a.kv_dim + a.q_dim * d
            body += b.ffn.n_params(d)
            if isinstance(b.ffn, MoEFFN):
                inactive += (b.ffn.n_experts - b.ffn.top_k) * b.ffn.expert_params(d)
        total = embedding + body
        return ParamCounts(total=total, active=total - inactive, embedding=embedding, non_embedding=body)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward matmul FLOPs per token (2 per multiply-add), averaged over a sequence of ``seq_len``.

        Counts the projections, attention scores and weighted sum (with the causal and window limits:
        on average a query at position t sees ``min(t, window)`` keys), the routed and shared experts
        each token actually uses, the router and the output head. Norms, activations and softmax are
        left out.
        """
        t = self.max_seq_len if seq_len is None else seq_len
        d = self.d_model
        flops = 2 * d * self.vocab_size
        for b in self.blocks:
            a = b.attn
            flops += 2 * (d * a.q_dim + 2 * d * a.kv_dim + a.q_dim * d)
            flops += 2 * 2 * a.q_dim * _mean_context(t, a.window)
            f = b.ffn
            if isinstance(f, MoEFFN):
                flops += 2 * d * f.n_experts + 2 * f.top_k * f.expert_params(d)
                if f.shared_expert_hidden:
                    flops += 2 * ffn_params(d, f.shared_expert_hidden, f.activation)
            else:
                flops += 2 * f.n_params(d)
        return int(round(flops))

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Bytes of K and V cache each generated token adds (bf16/fp16 by default)."""
        return sum(2 * b.attn.kv_dim for b in self.blocks) * bytes_per_value

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "max_seq_len": self.max_seq_len,
            "norm": self.norm,
            "norm_eps": self.norm_eps,
            "pos": self.pos,
            "rope_base": self.rope_base,
            "tie_embeddings": self.tie_embeddings,
            "blocks": [_block_to_dict(b) for b in self.blocks],
        }

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON (sorted keys); ``from_json(to_json())`` gives an equal architecture."""
        if indent is None:
            return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @property
    def id(self) -> str:
        """A stable 12-hex-digit id: the start of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Architecture:
        """Parse the JSON form; every problem (wrong key, type or value) is named in one error."""
        return _ArchParser(source).parse(data)

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> Architecture:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchitectureError(f"not valid JSON: {e}", source) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        """Read an architecture JSON file; a missing, unreadable or malformed file raises :class:`ArchitectureError`."""
        path = Path(path)
        if path.is_dir():
            raise ArchitectureError(f"{path} is a directory, not an architecture JSON file")
        if not path.is_file():
            raise ArchitectureError(f"file not found: {path}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArchitectureError(f"not UTF-8 text (a byte 0x{e.object[e.start]:02x} at offset {e.start})",
                                    str(path)) from None
        except OSError as e:
            raise ArchitectureError(f"cannot be read ({e.strerror or e})", str(path)) from None
        return cls.from_json(text, source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=2) + "\n")

    def short(self) -> str:
        """Compact description, runs of equal layers folded: ``d128 rope/rmsnorm: 4x[h4/kv2 w16 swiglu:344]``."""
        parts: list[list] = []
        for b in self.blocks:
            a, f = b.attn, b.ffn
            attn = f"h{a.n_heads}/kv{a.n_kv_heads}" + (f"x{a.head_dim}" if a.q_dim != self.d_model else "")
            attn += f" w{a.window}" if a.window else ""
            if isinstance(f, MoEFFN):
                shared = "+s" if f.shared_expert_hidden else ""
                ffn = f"moe{f.n_experts}k{f.top_k} {f.activation}:{f.expert_hidden}{shared}"
            else:
                ffn = f"{f.activation}:{f.hidden}"
            text = f"{attn} {ffn}"
            if parts and parts[-1][0] == text:
                parts[-1][1] += 1
            else:
                parts.append([text, 1])
        layers = " ".join(f"{n}x[{t}]" if n > 1 else f"[{t}]" for t, n in parts)
        tied = "" if self.tie_embeddings else " untied"
        return f"d{self.d_model} {self.pos}/{self.norm}{tied}: {layers}"

    def summary(self) -> str:
        """One line: id, depth, width, parameter counts."""
        c = self.param_counts()
        moe = f", {c.active / 1e6:.2f}M active" if self.is_moe else ""
        return (
            f"arch {self.id}: {self.n_layers} layers, d_model {self.d_model}, {self.pos}, {self.norm}, "
            f"{c.total / 1e6:.2f}M params{moe}"
        )


def _mean_context(t: int, window: int | None) -> float:
    """Mean number of keys a causal query sees over positions 1..t."""
    if window is None or window >= t:
        return (t + 1) / 2
    # positions 1..w-1 see t keys, later ones see w.
    return (window * (window - 1) / 2 + (t - window + 1) * window) / t


def _block_to_dict(b: BlockSpec) -> dict[str, Any]:
    a = b.attn
    attn = {"n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim, "window": a.window}
    f = b.ffn
    if isinstance(f, MoEFFN):
        ffn: dict[str, Any] = {
            "kind": "moe",
            "n_experts": f.n_experts,
            "top_k": f.top_k,
            "expert_hidden": f.expert_hidden,
            "activation": f.activation,
            "shared_expert_hidden": f.shared_expert_hidden,
            "aux_loss_weight": f.aux_loss_weight,
        }
    else:
        ffn = {"kind": "dense", "hidden": f.hidden, "activation": f.activation}
    return {"attn": attn, "ffn": ffn}


class _ArchParser:
    """Turns the JSON form into an Architecture, collecting every problem with its key path."""

    TOP = {
        "vocab_size": int,
        "d_model": int,
        "max_seq_len": int,
        "norm": str,
        "norm_eps": float,
        "pos": str,
        "rope_base": float,
        "tie_embeddings": bool,
    }
    ATTN = {"n_heads": int, "n_kv_heads": int, "head_dim": int, "window": (int, type(None))}
    DENSE = {"hidden": int, "activation": str}
    MOE = {
        "n_experts": int,
        "top_k": int,
        "expert_hidden": int,
        "activation": str,
        "shared_expert_hidden": int,
        "aux_loss_weight": float,
    }
    REQUIRED_TOP = ("vocab_size", "d_model", "max_seq_len", "blocks")

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[str] = []

    def parse(self, data: Any) -> Architecture:
        if not isinstance(data, dict):
            raise ArchitectureError(f"expected a JSON object, got {type(data).__name__}", self.source)
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            self.problems.append(f"format={fmt!r} is not supported (expected {FORMAT!r})")
        top = self._fields(data, self.TOP, "", extra=("format", "blocks"))
        for key in self.REQUIRED_TOP:
            if key not in data:
                self.problems.append(f"missing key {key!r}")
        blocks = data.get("blocks", [])
        if not isinstance(blocks, list):
            self.problems.append("blocks must be a list")
            blocks = []
        parsed = [self._block(b, f"blocks[{i}].") for i, b in enumerate(blocks)]
        if self.problems:
            raise ArchitectureError(self.problems, self.source)
        try:
            return Architecture(blocks=tuple(parsed), **top)
        except ArchitectureError as e:
            raise ArchitectureError(e.problems, self.source) from None

    def _fields(self, data: dict, schema: dict, where: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in data:
            if key not in schema and key not in extra:
                allowed = ", ".join(sorted([*schema, *extra]))
                self.problems.append(f"unknown key {where}{key!r} (allowed: {allowed})")
        for key, typ in schema.items():
            if key not in data:
                continue
            value = data[key]
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            types = typ if isinstance(typ, tuple) else (typ,)
            if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
                names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                self.problems.append(f"{where}{key}={value!r} must be {names}")
                continue
            out[key] = value
        return out

    def _block(self, data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            self.problems.append(f"{where[:-1]} must be an object with 'attn' and 'ffn'")
            return None
        for key in data:
            if key not in ("attn", "ffn"):
                self.problems.append(f"unknown key {where}{key!r} (allowed: attn, ffn)")
        attn_d, ffn_d = data.get("attn"), data.get("ffn")
        if not isinstance(attn_d, dict) or not isinstance(ffn_d, dict):
            self.problems.append(f"{where[:-1]} must have objects 'attn' and 'ffn'")
            return None
        attn = self._fields(attn_d, self.ATTN, where + "attn.")
        missing = [k for k in ("n_heads", "n_kv_heads", "head_dim") if k not in attn_d]
        kind = ffn_d.get("kind", "dense")
        if kind == "dense":
            ffn = self._fields(ffn_d, self.DENSE, where + "ffn.", extra=("kind",))
            missing += [f"ffn.{k}" for k in ("hidden",) if k not in ffn_d]
            cls: type = DenseFFN
        elif kind == "moe":
            ffn = self._fields(ffn_d, self.MOE, where + "ffn.", extra=("kind",))
            missing += [f"ffn.{k}" for k in ("n_experts", "top_k", "expert_hidden") if k not in ffn_d]
            cls = MoEFFN
        else:
            self.problems.append(f"{where}ffn.kind={kind!r} must be 'dense' or 'moe'")
            return None
        for key in missing:
            self.problems.append(f"missing key {where}{key}")
        if missing or self.problems:
            return None
        return BlockSpec(AttentionSpec(**attn), cls(**ffn))


def param_count_str(n: int) -> str:
    """Human form of a parameter count: 812.3K, 24.1M, 1.3B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.{1 if n < 100 * scale else 0}f}{unit}"
    return str(n)
