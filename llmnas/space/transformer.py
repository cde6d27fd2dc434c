"""Search spaces of decoder-only transformers, declared in YAML.

A space lists the choices of every global dimension (width, depth, norm, positions, ...) and of every
per-layer dimension (heads, KV-head ratio, attention kind and window, FFN kind, activation, widths,
experts). Optuna sees one fixed set of categorical parameters whatever the depth: every per-layer
decision is asked for all ``max(n_layers)`` layers (``L00.n_heads``, ``L01.n_heads``, ...) and the
layers beyond the sampled depth are ignored. Decisions with a single choice are constants, not
parameters. Keys listed under ``uniform`` are decided once for all layers (``layer.activation``).

Example YAML::

    name: tiny
    vocab_size: 257          # replaced by the tokenizer's size at search time
    max_seq_len: 128
    d_model: [64, 96, 128]
    n_layers: {min: 2, max: 4}
    pos: [rope, alibi, learned]
    layer:
      n_heads: [2, 4]
      kv_ratio: [1, 2]        # n_kv_heads = largest divisor of n_heads <= n_heads / kv_ratio
      attention: [full, sliding]
      window: [32, 64]
      ffn: [dense]
      activation: [gelu, swiglu]
      ffn_mult: [2, 4]        # hidden = ffn_mult * d_model, rounded to a multiple of 8
    uniform: [activation]
    constraints: {max_params: 3000000}

:mod:`llmnas.space.yaml_space` validates such a mapping; :func:`llmnas.space.load_space` reads the file.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from optuna.distributions import CategoricalChoiceType

from llmnas.errors import SpaceError
from llmnas.space.arch import (
    Architecture,
    AttentionSpec,
    BlockSpec,
    DenseFFN,
    MoEFFN,
)
from llmnas.space.base import CategoricalSpace, Params, RngLike
from llmnas.space.feasibility import Feasibility, explain, feasibility

GLOBAL_KEYS = ("d_model", "n_layers", "norm", "norm_eps", "pos", "rope_base", "tie_embeddings")
LAYER_KEYS = (
    "n_heads",
    "kv_ratio",
    "head_dim",
    "attention",
    "window",
    "ffn",
    "activation",
    "ffn_mult",
    "ffn_hidden",
    "n_experts",
    "top_k",
    "expert_mult",
    "expert_hidden",
    "shared_expert",
    "aux_loss_weight",
)
MOE_KEYS = ("n_experts", "top_k", "expert_mult", "expert_hidden", "shared_expert", "aux_loss_weight")
DENSE_KEYS = ("ffn_mult", "ffn_hidden")
ROUND_TO = 8  # FFN widths given as multiples of d_model are rounded to a multiple of this


@dataclass(frozen=True)
class Constraints:
    """Hard limits on sampled architectures (``None`` = no limit)."""

    min_params: int | None = None
    max_params: int | None = None
    max_active_params: int | None = None
    max_non_embedding_params: int | None = None
    max_flops_per_token: int | None = None
    max_kv_cache_bytes_per_token: int | None = None

    @staticmethod
    def measure(arch: Architecture) -> dict[str, int]:
        """The quantities the limits apply to."""
        counts = arch.param_counts()
        return {
            "params": counts.total,
            "active_params": counts.active,
            "non_embedding_params": counts.non_embedding,
            "flops_per_token": arch.flops_per_token(),
            "kv_cache_bytes_per_token": arch.kv_cache_bytes_per_token(),
        }

    def limits(self) -> list[tuple[str, str, int]]:
        """The limits that are set, as ``(quantity, "min" or "max", bound)``."""
        out = [("params", "min", self.min_params)] if self.min_params is not None else []
        for name in ("params", "active_params", "non_embedding_params", "flops_per_token", "kv_cache_bytes_per_token"):
            bound = getattr(self, f"max_{name}")
            if bound is not None:
                out.append((name, "max", bound))
        return out

    def violations(self, arch: Architecture) -> list[str]:
        """Each limit ``arch`` breaks, as ``"name: value > max_name limit"``."""
        measured = self.measure(arch)
        out = []
        for name, kind, bound in self.limits():
            value = measured[name]
            if kind == "min" and value < bound:
                out.append(f"{name}: {value} < min_{name} {bound}")
            elif kind == "max" and value > bound:
                out.append(f"{name}: {value} > max_{name} {bound}")
        return out

    def optuna_values(self, arch: Architecture) -> dict[str, float]:
        """Optuna's constraint convention (``Trial.set_constraint``): one value per limit, <= 0 when it is met."""
        measured = self.measure(arch)
        return {f"{k}_{n}": float(measured[n] - b if k == "max" else b - measured[n]) for n, k, b in self.limits()}


def largest_divisor_at_most(n: int, bound: float) -> int:
    """The largest divisor of ``n`` that is ``<= bound`` (at least 1)."""
    return max((d for d in range(1, n + 1) if n % d == 0 and d <= bound), default=1)


def scaled_width(mult: float, d_model: int) -> int:
    return max(ROUND_TO, int(round(mult * d_model / ROUND_TO)) * ROUND_TO)


class TransformerSpace(CategoricalSpace[Architecture]):
    """A YAML-declared space of heterogeneous decoder-only transformers.

    Build one with :func:`llmnas.space.load_space` (from a file) or :meth:`from_config` (from a dict).
    """

    def __init__(
        self,
        *,
        name: str,
        vocab_size: int,
        max_seq_len: int,
        global_choices: dict[str, tuple[CategoricalChoiceType, ...]],
        layer_choices: dict[str, tuple[CategoricalChoiceType, ...]],
        uniform: tuple[str, ...] = (),
        constraints: Constraints = Constraints(),
        description: str = "",
        source: str = "",
    ) -> None:
        self.name = name
        self.description = description
        self.source = source  # the YAML file, named in errors
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.global_choices = global_choices
        self.layer_choices = layer_choices
        self.uniform = uniform
        self.constraints = constraints
        self.max_layers = max(global_choices["n_layers"])  # type: ignore[type-var]
        self._choices = self._build_choices()
        self._feasibility: Feasibility | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, data: Any, source: str = "<dict>") -> TransformerSpace:
        """Validate a parsed YAML mapping; every problem names ``source`` and the key."""
        from llmnas.space.yaml_space import parse_transformer_space  # the parser builds this class

        return parse_transformer_space(data, source)

    def _replace(self, **changes: Any) -> TransformerSpace:
        values = dict(
            name=self.name,
            vocab_size=self.vocab_size,
            max_seq_len=self.max_seq_len,
            global_choices=self.global_choices,
            layer_choices=self.layer_choices,
            uniform=self.uniform,
            constraints=self.constraints,
            description=self.description,
            source=self.source,
        )
        return TransformerSpace(**{**values, **changes})

    def with_vocab_size(self, vocab_size: int) -> TransformerSpace:
        """The same space for another tokenizer."""
        return self._replace(vocab_size=vocab_size)

    def with_max_seq_len(self, max_seq_len: int) -> TransformerSpace:
        """The same space for another context length (checked against the window choices)."""
        windows = self.layer_choices.get("window", ())
        if "sliding" in self.layer_choices["attention"] and any(w >= max_seq_len for w in windows):  # type: ignore[operator]
            raise SpaceError(
                f"space {self.name!r}: window choices {list(windows)} must all be < max_seq_len={max_seq_len}"
            )
        return self._replace(max_seq_len=max_seq_len)

    def with_constraints(self, constraints: Constraints) -> TransformerSpace:
        """The same space with other hard limits."""
        return self._replace(constraints=constraints)

    def _layer_param(self, i: int, key: str) -> str:
        return f"layer.{key}" if key in self.uniform else f"L{i:02d}.{key}"

    def _build_choices(self) -> dict[str, tuple[CategoricalChoiceType, ...]]:
        out: dict[str, tuple[CategoricalChoiceType, ...]] = {}
        for key, ch in self.global_choices.items():
            if len(ch) > 1:
                out[key] = ch
        for key in self.uniform:
            if len(self.layer_choices[key]) > 1:
                out[f"layer.{key}"] = self.layer_choices[key]
        for i in range(self.max_layers):
            for key, ch in self.layer_choices.items():
                if key not in self.uniform and len(ch) > 1:
                    out[f"L{i:02d}.{key}"] = ch
        return out

    # ------------------------------------------------------------------ CategoricalSpace
    def choices(self) -> dict[str, tuple[CategoricalChoiceType, ...]]:
        return self._choices

    def _get(self, params: Params, name: str, key: str, options: dict[str, tuple]) -> Any:
        ch = options[key]
        return ch[0] if len(ch) == 1 else params[name]

    def _global(self, params: Params, key: str) -> Any:
        return self._get(params, key, key, self.global_choices)

    def _layer(self, params: Params, i: int, key: str) -> Any:
        return self._get(params, self._layer_param(i, key), key, self.layer_choices)

    def decode(self, params: Params) -> Architecture:
        d_model = self._global(params, "d_model")
        n_layers = self._global(params, "n_layers")
        blocks = tuple(self._block(params, i, d_model) for i in range(n_layers))
        return Architecture(
            vocab_size=self.vocab_size,
            d_model=d_model,
            max_seq_len=self.max_seq_len,
            blocks=blocks,
            norm=self._global(params, "norm"),
            norm_eps=float(self._global(params, "norm_eps")),
            pos=self._global(params, "pos"),
            rope_base=float(self._global(params, "rope_base")),
            tie_embeddings=self._global(params, "tie_embeddings"),
        )

    def _block(self, params: Params, i: int, d_model: int) -> BlockSpec:
        def get(key: str) -> Any:
            return self._layer(params, i, key)

        kind = get("attention")
        window = get("window") if kind == "sliding" else None
        return BlockSpec(
            attention_spec(d_model, get("n_heads"), get("kv_ratio"), get("head_dim"), kind, window),
            ffn_spec(d_model, get, self.layer_choices),
        )

    def key(self, params: Params) -> str:
        return self.decode(params).id

    def is_feasible(self, params: Params) -> bool:
        return not self.constraints.violations(self.decode(params))

    # ------------------------------------------------------------------ feasibility of the constraints
    def feasibility(self) -> Feasibility:
        """Exact ranges of the constrained quantities and an architecture that meets every limit, if any
        (see :mod:`llmnas.space.feasibility`); computed once per space object."""
        if self._feasibility is None:
            self._feasibility = feasibility(self)
        return self._feasibility

    def check_feasible(self) -> Architecture | None:
        """Raise :class:`SpaceError` if no architecture of the space meets its constraints.

        Call it once the constraints are final (after :meth:`with_constraints`, :meth:`with_vocab_size`
        and :meth:`with_max_seq_len`): the message names the limit that cannot be met and the range the
        space spans. Returns an architecture that meets them (``None`` when the space has no limits).
        """
        if not self.constraints.limits():
            return None
        result = self.feasibility()
        if result.witness is None:
            raise explain(self, result, self.source or f"space {self.name!r}")
        return result.witness

    def sample_params(self, rng: RngLike = None) -> Params:
        """Uniformly random decisions whose architecture meets the constraints.

        When the limits leave too small a share of the space for random draws to hit, the decisions of
        :meth:`check_feasible`'s architecture are returned instead (not random, but feasible); when no
        architecture meets them, :class:`SpaceError` says why.
        """
        try:
            return super().sample_params(rng)
        except SpaceError:  # no feasible draw in max_tries
            witness = self.check_feasible()
            assert witness is not None  # the draws only fail under limits
            return self.encode(witness)

    def active(self, params: Params) -> list[str]:
        """Decisions whose value matters: globals, and per-layer ones of layers below the depth that
        their layer's attention kind and FFN kind use."""
        n_layers = self._global(params, "n_layers")
        pos = self._global(params, "pos")
        used: set[str] = set()
        for i in range(n_layers):
            for key in self.layer_choices:
                if key == "window" and self._layer(params, i, "attention") != "sliding":
                    continue
                ffn = self._layer(params, i, "ffn")
                if key in MOE_KEYS and ffn != "moe" or key in DENSE_KEYS and ffn != "dense":
                    continue
                used.add(self._layer_param(i, key))
        return [
            name
            for name in self._choices
            if name in used or name in self.global_choices and not (name == "rope_base" and pos != "rope")
        ]

    def encode(self, candidate: Architecture) -> Params:
        """Decisions that build ``candidate``; :class:`SpaceError` if it is not in this space.

        Layers beyond the depth copy the last layer's decisions, so growing the depth by mutation
        repeats the last layer.
        """
        arch = candidate
        params: Params = {}
        problems: list[str] = []
        if arch.vocab_size != self.vocab_size or arch.max_seq_len != self.max_seq_len:
            problems.append(
                f"vocab_size/max_seq_len {arch.vocab_size}/{arch.max_seq_len} differ from the space's "
                f"{self.vocab_size}/{self.max_seq_len}"
            )
        values = {
            "d_model": arch.d_model,
            "n_layers": arch.n_layers,
            "norm": arch.norm,
            "norm_eps": arch.norm_eps,
            "pos": arch.pos,
            "rope_base": arch.rope_base,
            "tie_embeddings": arch.tie_embeddings,
        }
        for key, value in values.items():
            ch = self.global_choices[key]
            if key == "rope_base" and arch.pos != "rope":
                value = ch[0]
            if value not in ch:
                problems.append(f"{key}={value!r} is not among the choices {list(ch)}")
            elif len(ch) > 1:
                params[key] = value
        layer_values = [self._encode_block(b, arch.d_model, i, problems) for i, b in enumerate(arch.blocks)]
        for key in self.uniform:
            if len(self.layer_choices[key]) == 1:
                continue
            seen = {v[key] for v in layer_values if key in v}
            if len(seen) > 1:
                problems.append(f"{key} differs between layers but is uniform in this space")
            params[f"layer.{key}"] = seen.pop() if seen else self.layer_choices[key][0]
        for i in range(self.max_layers):
            v = layer_values[min(i, len(layer_values) - 1)]
            for key, ch in self.layer_choices.items():
                if key not in self.uniform and len(ch) > 1:
                    params[f"L{i:02d}.{key}"] = v.get(key, ch[0])
        if problems:
            raise SpaceError(f"architecture {arch.id} is not in space {self.name!r}: " + "; ".join(problems))
        return params

    def _encode_block(self, b: BlockSpec, d_model: int, i: int, problems: list[str]) -> dict[str, Any]:
        """Per-layer decisions of one block (only the ones that matter for it)."""
        lc = self.layer_choices
        a, f = b.attn, b.ffn
        out: dict[str, Any] = {}

        def pick(key: str, matches: Iterable[Any], shown: Any) -> None:
            for value in lc[key]:
                if value in matches:
                    out[key] = value
                    return
            problems.append(f"layer {i}: {key} for {shown!r} is not among the choices {list(lc[key])}")

        pick("n_heads", [a.n_heads], a.n_heads)
        pick(
            "kv_ratio",
            [r for r in lc["kv_ratio"] if largest_divisor_at_most(a.n_heads, a.n_heads / r) == a.n_kv_heads],
            f"n_kv_heads={a.n_kv_heads}",
        )
        auto_ok = a.n_heads and d_model % a.n_heads == 0 and d_model // a.n_heads == a.head_dim
        pick("head_dim", [a.head_dim, *(["auto"] if auto_ok else [])], a.head_dim)
        pick("attention", ["full" if a.window is None else "sliding"], a.window)
        if a.window is not None:
            pick("window", [a.window], a.window)
        pick("activation", [f.activation], f.activation)
        if isinstance(f, MoEFFN):
            pick("ffn", ["moe"], "moe")
            pick("n_experts", [f.n_experts], f.n_experts)
            pick("top_k", [f.top_k], f.top_k)
            width_key = "expert_hidden" if "expert_hidden" in lc else "expert_mult"
            pick(
                width_key,
                [w for w in lc[width_key] if _width(width_key, w, d_model) == f.expert_hidden],
                f.expert_hidden,
            )
            shared = f.shared_expert_hidden != 0
            if shared and f.shared_expert_hidden != f.expert_hidden:
                problems.append(f"layer {i}: shared expert width must equal the expert width in this space")
            pick("shared_expert", [shared], shared)
            pick("aux_loss_weight", [f.aux_loss_weight], f.aux_loss_weight)
        else:
            pick("ffn", ["dense"], "dense")
            width_key = "ffn_hidden" if "ffn_hidden" in lc else "ffn_mult"
            pick(width_key, [w for w in lc[width_key] if _width(width_key, w, d_model) == f.hidden], f.hidden)
        return out

    # ------------------------------------------------------------------ size and description
    def size(self) -> int:
        """Number of distinct architectures (before hard constraints), counted exactly."""
        lc = self.layer_choices
        total = 0
        seen_globals = set()
        for combo in itertools.product(*(self.global_choices[k] for k in GLOBAL_KEYS if k != "n_layers")):
            g = dict(zip([k for k in GLOBAL_KEYS if k != "n_layers"], combo, strict=True))
            if g["pos"] != "rope":
                g["rope_base"] = None
            frozen = tuple(sorted(g.items(), key=lambda kv: kv[0]))
            if frozen in seen_globals:
                continue
            seen_globals.add(frozen)
            # Distinct (attention, ffn) sets for each assignment of the uniform keys.
            uni_sets = []
            for u in itertools.product(*(lc[k] for k in self.uniform)):
                fixed = dict(zip(self.uniform, u, strict=True))
                uni_sets.append(self.block_sets(g["d_model"], fixed))
            for n in self.global_choices["n_layers"]:
                total += _union_of_powers(uni_sets, int(n))  # type: ignore[arg-type]
        return total

    def block_sets(self, d_model: int, fixed: dict[str, Any]) -> tuple[frozenset, frozenset]:
        """The distinct attentions and FFNs one layer may have at width ``d_model``, with the per-layer keys
        in ``fixed`` held at the given values (each layer picks one of each, independently)."""
        lc = {k: ((fixed[k],) if k in fixed else v) for k, v in self.layer_choices.items()}
        attn = set()
        for h, r, hd, kind in itertools.product(
            lc["n_heads"], lc["kv_ratio"], lc["head_dim"], lc["attention"]
        ):
            for w in lc.get("window", (None,)) if kind == "sliding" else (None,):
                attn.add(attention_spec(d_model, h, r, hd, kind, w))
        ffn = set()
        keys = [k for k in lc if k in ("ffn", "activation", *DENSE_KEYS, *MOE_KEYS)]
        for combo in itertools.product(*(lc[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            ffn.add(ffn_spec(d_model, values.__getitem__, lc))
        return frozenset(attn), frozenset(ffn)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "vocab_size": self.vocab_size,
            "max_seq_len": self.max_seq_len,
            "global": {k: list(v) for k, v in self.global_choices.items()},
            "layer": {k: list(v) for k, v in self.layer_choices.items()},
            "uniform": list(self.uniform),
            "constraints": {k: v for k, v in vars(self.constraints).items() if v is not None},
            "n_params": len(self._choices),
            "size": self.size(),
        }


def attention_spec(
    d_model: int, n_heads: int, kv_ratio: int, head_dim: Any, kind: str, window: Any
) -> AttentionSpec:
    hd = d_model // n_heads if head_dim == "auto" else head_dim
    return AttentionSpec(
        n_heads=n_heads,
        n_kv_heads=largest_divisor_at_most(n_heads, n_heads / kv_ratio),
        head_dim=hd,
        window=window if kind == "sliding" else None,
    )


def _width(key: str, value: Any, d_model: int) -> int:
    return int(value) if key.endswith("hidden") else scaled_width(value, d_model)


def ffn_spec(d_model: int, get: Any, declared: Collection[str]) -> DenseFFN | MoEFFN:
    """The FFN of one layer from its decisions (``get(key)`` returns a per-layer decision; ``declared``
    are the per-layer keys the space has, which say whether widths are absolute or multiples)."""
    act = get("activation")
    if get("ffn") == "moe":
        key = "expert_hidden" if "expert_hidden" in declared else "expert_mult"
        hidden = _width(key, get(key), d_model)
        return MoEFFN(
            n_experts=get("n_experts"),
            top_k=get("top_k"),
            expert_hidden=hidden,
            activation=act,
            shared_expert_hidden=hidden if get("shared_expert") else 0,
            aux_loss_weight=float(get("aux_loss_weight")),
        )
    key = "ffn_hidden" if "ffn_hidden" in declared else "ffn_mult"
    return DenseFFN(hidden=_width(key, get(key), d_model), activation=act)


def _union_of_powers(sets: list[tuple[frozenset, frozenset]], n: int) -> int:
    """|union over u of (A_u x F_u)^n| by inclusion-exclusion (exact; the list is small)."""
    sets = list(dict.fromkeys(sets))
    if len(sets) > 16:
        raise SpaceError("too many combinations of 'uniform' keys to count the space exactly (at most 16)")
    total = 0
    for r in range(1, len(sets) + 1):
        for group in itertools.combinations(sets, r):
            a = frozenset.intersection(*(s[0] for s in group))
            f = frozenset.intersection(*(s[1] for s in group))
            total += (-1) ** (r + 1) * (len(a) * len(f)) ** n
    return total
