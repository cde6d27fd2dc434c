"""The YAML schema of transformer search spaces: a parsed mapping becomes a :class:`TransformerSpace`.

Every problem raises one :class:`~llmnas.errors.SpaceError` naming the file, the dotted key and what is
allowed (``tiny.yaml: layer.n_heads: 3 must be ...``). The keys and their meaning are documented in
:mod:`llmnas.space.transformer`; :func:`llmnas.space.load_space` reads the file.

Example:
    >>> space = parse_transformer_space(
    ...     {"vocab_size": 65, "max_seq_len": 32, "d_model": [32], "n_layers": [1, 2], "layer": {"n_heads": [2, 4]}},
    ...     "micro.yaml")
    >>> space.size()
    6
"""

from __future__ import annotations

import math
from typing import Any

from optuna.distributions import CategoricalChoiceType

from llmnas.errors import ArchitectureError, SpaceError
from llmnas.space.arch import ACTIVATIONS, LIMITS, NORMS, POSITIONS, Architecture, BlockSpec
from llmnas.space.transformer import (
    DENSE_KEYS,
    GLOBAL_KEYS,
    LAYER_KEYS,
    MOE_KEYS,
    Constraints,
    TransformerSpace,
)

TOP_KEYS = (
    "kind",
    "name",
    "description",
    "vocab_size",
    "max_seq_len",
    *GLOBAL_KEYS,
    "layer",
    "uniform",
    "constraints",
)
CONSTRAINT_KEYS = (
    "min_params",
    "max_params",
    "max_active_params",
    "max_non_embedding_params",
    "max_flops_per_token",
    "max_kv_cache_bytes_per_token",
)
DEFAULTS: dict[str, tuple[CategoricalChoiceType, ...]] = {
    "norm": ("rmsnorm",),
    "norm_eps": (1e-5,),
    "pos": ("rope",),
    "rope_base": (10000.0,),
    "tie_embeddings": (True,),
    "kv_ratio": (1,),
    "head_dim": ("auto",),
    "attention": ("full",),
    "ffn": ("dense",),
    "activation": ("swiglu",),
    "shared_expert": (False,),
    "aux_loss_weight": (0.01,),
}
#: Most choices one decision may list (a range such as ``{min: 1, max: 100000}`` is refused, not expanded).
MAX_CHOICES = 1024
#: The largest value of each integer key: the architecture's own limits (:data:`llmnas.space.arch.LIMITS`).
KEY_LIMITS = {
    "d_model": LIMITS["d_model"],
    "n_layers": LIMITS["n_layers"],
    "n_heads": LIMITS["n_heads"],
    "kv_ratio": LIMITS["n_heads"],
    "head_dim": LIMITS["head_dim"],
    "window": LIMITS["window"],
    "ffn_hidden": LIMITS["hidden"],
    "n_experts": LIMITS["n_experts"],
    "top_k": LIMITS["top_k"],
    "expert_hidden": LIMITS["expert_hidden"],
}


def parse_transformer_space(data: Any, source: str = "<dict>") -> TransformerSpace:
    """Validate a parsed YAML mapping into a :class:`TransformerSpace`; every problem names ``source`` and the key."""
    return SpaceParser(source).parse(data)


class SpaceParser:
    """Validates a YAML mapping into a TransformerSpace, naming the file and key of each problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, msg: str) -> SpaceError:
        return SpaceError(f"{self.source}: {key}: {msg}")

    def parse(self, data: Any) -> TransformerSpace:
        if not isinstance(data, dict):
            raise SpaceError(
                f"{self.source}: expected a mapping of keys at the top, got {type(data).__name__}"
            )
        for key in data:
            if key not in TOP_KEYS:
                raise self.fail(str(key), f"unknown key (allowed: {', '.join(TOP_KEYS)})")
        if data.get("kind", "transformer") != "transformer":
            raise self.fail("kind", f"{data['kind']!r} is not a transformer space")
        for key in ("vocab_size", "max_seq_len", "d_model", "n_layers"):
            if key not in data:
                raise self.fail(key, "missing (required)")
        name = self.scalar(data, "name", str, default=self.source.rsplit("/", 1)[-1].removesuffix(".yaml"))
        if not name:
            raise self.fail("name", "must be a non-empty string")
        vocab_size = self.scalar(data, "vocab_size", int, positive=True, limit=LIMITS["vocab_size"])
        max_seq_len = self.scalar(data, "max_seq_len", int, positive=True, limit=LIMITS["max_seq_len"])
        g = {key: self.choices(data, key, key, DEFAULTS.get(key)) for key in GLOBAL_KEYS}
        layer = data.get("layer", {})
        if not isinstance(layer, dict):
            raise self.fail("layer", "must be a mapping of per-layer keys to choices")
        for key in layer:
            if key not in LAYER_KEYS:
                raise self.fail(f"layer.{key}", f"unknown key (allowed: {', '.join(LAYER_KEYS)})")
        if "n_heads" not in layer:
            raise self.fail("layer.n_heads", "missing (required)")
        lc = {key: self.choices(layer, key, f"layer.{key}", DEFAULTS.get(key)) for key in LAYER_KEYS}
        lc = {k: v for k, v in lc.items() if v is not None}
        if "moe" not in lc["ffn"]:  # MoE defaults mean nothing without MoE layers
            lc = {k: v for k, v in lc.items() if k not in MOE_KEYS or k in layer}
        self.check_values(g, lc, max_seq_len)
        uniform = data.get("uniform", [])
        if not isinstance(uniform, list) or any(not isinstance(u, str) or u not in lc for u in uniform):
            raise self.fail(
                "uniform", f"{uniform!r} must be a list of per-layer keys of this space ({', '.join(lc)})"
            )
        if len(set(uniform)) != len(uniform):
            raise self.fail("uniform", f"{uniform!r} names a key twice")
        constraints = self.constraints(data.get("constraints", {}) or {})
        description = self.scalar(data, "description", str, default="")
        space = TransformerSpace(
            name=name,
            vocab_size=vocab_size,
            max_seq_len=max_seq_len,
            global_choices=g,  # type: ignore[arg-type]
            layer_choices=lc,
            uniform=tuple(uniform),
            constraints=constraints,
            description=description,
            source=self.source,
        )
        self.check_every_block_builds(space)
        return space

    def scalar(
        self, data: dict, key: str, typ: type, default: Any = None, positive: bool = False, limit: int | None = None
    ) -> Any:
        if key not in data:
            return default
        value = data[key]
        if typ is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # 1e6 reads as a float in YAML
        if isinstance(value, bool) and typ is not bool or not isinstance(value, typ):
            raise self.fail(key, f"{value!r} must be a single {typ.__name__}")
        if positive and value < 1:
            raise self.fail(key, f"{value!r} must be positive")
        if limit is not None and value > limit:
            raise self.fail(key, f"{value:,} is too large (at most {limit:,})")
        return value

    def choices(self, data: dict, key: str, where: str, default: tuple | None) -> tuple | None:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, dict):
            extra = set(value) - {"min", "max", "step"}
            if extra or "min" not in value or "max" not in value:
                raise self.fail(where, f"a range must be {{min: int, max: int, step: int}}, got {value!r}")
            lo, hi, step = value["min"], value["max"], value.get("step", 1)
            if (
                not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, step))
                or step < 1
                or lo > hi
            ):
                raise self.fail(where, f"range {value!r} needs integers with min <= max and step >= 1")
            if (hi - lo) // step + 1 > MAX_CHOICES:  # counted before the list is built
                raise self.fail(where, f"range {value!r} has {(hi - lo) // step + 1:,} values (at most {MAX_CHOICES})")
            value = list(range(lo, hi + 1, step))
        elif not isinstance(value, list):
            value = [value]
        if not value:
            raise self.fail(where, "empty choice list (give at least one value)")
        if len(value) > MAX_CHOICES:
            raise self.fail(where, f"{len(value):,} choices (at most {MAX_CHOICES})")
        if len(set(map(repr, value))) != len(value):
            raise self.fail(where, f"repeated choices in {value!r}")
        for v in value:
            self.check_type(key, where, v)
        return tuple(
            float(v) if key in ("norm_eps", "rope_base", "aux_loss_weight", "ffn_mult", "expert_mult") else v
            for v in value
        )

    def check_type(self, key: str, where: str, v: Any) -> None:
        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x: Any) -> bool:
            return is_int(x) or isinstance(x, float) and math.isfinite(x)

        enums = {
            "norm": NORMS,
            "pos": POSITIONS,
            "attention": ("full", "sliding"),
            "ffn": ("dense", "moe"),
            "activation": ACTIVATIONS,
            "tie_embeddings": (True, False),
            "shared_expert": (True, False),
        }
        if key in enums:
            ok = v in enums[key] and isinstance(v, bool) == isinstance(enums[key][0], bool)
            allowed = ", ".join(str(e).lower() if isinstance(e, bool) else str(e) for e in enums[key])
            if not ok:
                raise self.fail(where, f"{v!r} is not allowed (allowed: {allowed})")
        elif key == "head_dim":
            if not (v == "auto" or is_int(v) and 0 < v <= KEY_LIMITS[key]):
                raise self.fail(
                    where, f"{v!r} must be 'auto' (d_model // n_heads) or an integer in 1..{KEY_LIMITS[key]}"
                )
        elif key in ("norm_eps", "aux_loss_weight"):
            if not is_num(v) or v < 0 or key == "norm_eps" and not 0 < v < 1:
                raise self.fail(
                    where, f"{v!r} must be a number" + (" in (0, 1)" if key == "norm_eps" else " >= 0")
                )
        elif key == "rope_base":
            if not is_num(v) or v <= 1:
                raise self.fail(where, f"{v!r} must be a (finite) number > 1")
        elif key in ("ffn_mult", "expert_mult"):
            if not is_num(v) or v <= 0:
                raise self.fail(where, f"{v!r} must be a positive (finite) number")
        elif not is_int(v) or v < 1:
            raise self.fail(where, f"{v!r} must be a positive integer")
        elif key in KEY_LIMITS and v > KEY_LIMITS[key]:
            raise self.fail(where, f"{v:,} is too large (at most {KEY_LIMITS[key]:,})")

    def check_values(self, g: dict, lc: dict, max_seq_len: int) -> None:
        def need(present: bool, key: str, why: str) -> None:
            if not present:
                raise self.fail(key, why)

        sliding = "sliding" in lc["attention"]
        need(not sliding or "window" in lc, "layer.window", "missing: attention choices include 'sliding'")
        need(sliding or "window" not in lc, "layer.window", "given, but attention choices have no 'sliding'")
        for w in lc.get("window", ()):
            need(
                w < max_seq_len,
                "layer.window",
                f"{w} must be < max_seq_len={max_seq_len} (otherwise use 'full')",
            )
        moe = "moe" in lc["ffn"]
        dense = "dense" in lc["ffn"]
        for key in ("n_experts", "top_k"):
            need(not moe or key in lc, f"layer.{key}", "missing: ffn choices include 'moe'")
        for key in MOE_KEYS[:4]:
            need(moe or key not in lc, f"layer.{key}", "given, but ffn choices have no 'moe'")
        for key in DENSE_KEYS:
            need(dense or key not in lc, f"layer.{key}", "given, but ffn choices have no 'dense'")
        if dense and "ffn_mult" not in lc and "ffn_hidden" not in lc:
            lc["ffn_mult"] = (4.0,)  # the classic 4x width
        if dense:
            need(
                ("ffn_mult" in lc) != ("ffn_hidden" in lc),
                "layer.ffn_mult",
                "give exactly one of ffn_mult (times d_model) or ffn_hidden (absolute width)",
            )
        if moe:
            need(
                ("expert_mult" in lc) != ("expert_hidden" in lc),
                "layer.expert_mult",
                "give exactly one of expert_mult (times d_model) or expert_hidden (absolute width)",
            )
            need(
                min(lc["n_experts"]) >= 2,
                "layer.n_experts",
                f"{list(lc['n_experts'])}: every choice must be >= 2",
            )
            need(
                max(lc["top_k"]) <= min(lc["n_experts"]),
                "layer.top_k",
                f"{list(lc['top_k'])}: every choice must be <= the smallest n_experts {min(lc['n_experts'])}",
            )
        for d in g["d_model"]:
            for h in lc["n_heads"]:
                if "auto" in lc["head_dim"] and d % h:
                    raise self.fail(
                        "layer.head_dim",
                        f"'auto' needs d_model divisible by n_heads: d_model={d}, n_heads={h}",
                    )

    def constraints(self, data: Any) -> Constraints:
        if not isinstance(data, dict):
            raise self.fail("constraints", f"must be a mapping of limits ({', '.join(CONSTRAINT_KEYS)})")
        values = {}
        for key, v in data.items():
            if key not in CONSTRAINT_KEYS:
                raise self.fail(f"constraints.{key}", f"unknown key (allowed: {', '.join(CONSTRAINT_KEYS)})")
            if v is None:
                continue
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise self.fail(f"constraints.{key}", f"{v!r} must be a positive integer or null")
            values[key] = v
        if values.get("min_params", 0) > values.get("max_params", math.inf):
            raise self.fail(
                "constraints.min_params", f"{values['min_params']:,} must be <= max_params {values['max_params']:,}"
            )
        return Constraints(**values)

    def check_every_block_builds(self, space: TransformerSpace) -> None:
        """Every per-layer combination must give a valid layer at every width and positional scheme."""
        for d in space.global_choices["d_model"]:
            for pos in space.global_choices["pos"]:
                attn, ffn = space.block_sets(d, {})
                block = BlockSpec(next(iter(attn)), next(iter(ffn)))
                for a in attn:
                    self.try_build(space, d, pos, BlockSpec(a, block.ffn))
                for f in ffn:
                    self.try_build(space, d, pos, BlockSpec(block.attn, f))

    def try_build(self, space: TransformerSpace, d: int, pos: str, block: BlockSpec) -> None:
        try:
            Architecture(
                vocab_size=space.vocab_size,
                d_model=d,
                max_seq_len=space.max_seq_len,
                blocks=(block,),
                pos=pos,
            )
        except ArchitectureError as e:
            raise SpaceError(
                f"{self.source}: the choices allow an impossible layer (d_model={d}, pos={pos}): "
                + "; ".join(p.removeprefix("layer 0: ") for p in e.problems)
            ) from None
