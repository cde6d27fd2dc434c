"""Hardware objectives and limits in a search: the recipe's ``hardware`` section and the scorer the engine uses.

A recipe names ``prefill_ms``, ``decode_tokens_per_s``, ``peak_memory_mb`` or ``train_step_ms`` among its
objectives (``decode_tokens_per_s`` is maximised, the others minimised), and may cap them
(``max_prefill_ms``, ``min_decode_tokens_per_s``, ``max_peak_memory_mb``). The ``hardware`` section says how
they are obtained::

    hardware:
      mode: predicted                               # or measured (on this machine, for every new architecture)
      predictor: runs/hw/tiny/predictor.json        # written by llmnas hw profile (predicted mode)
      device: cpu                                   # the device measured (or the predictor's device)
      settings: {repeats: 7}                        # measured mode: batch_size, prompt_len, new_tokens, ...
      max_prefill_ms: 4.0

The values are the same whatever the evaluator (``scratch``, ``proxy``, ``supernet``) and the sampler: they are
a property of the architecture, recorded as the trial's user attributes. Before the study opens,
:meth:`HardwareScorer.check_feasible` refuses a cap that no architecture of the space can meet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmnas.errors import LlmnasError, RecipeError
from llmnas.hardware.device import HardwareError, resolve_device
from llmnas.hardware.measure import Settings, measure_many
from llmnas.hardware.predictor import LatencyPredictor, load_predictor
from llmnas.space.arch import Architecture, BlockSpec

MODES = ("measured", "predicted")
#: Objective name: (direction, what it is).
HW_OBJECTIVES = {
    "prefill_ms": ("minimize", "prompt latency with the KV cache (ms), measured or predicted on the recipe's device"),
    "decode_tokens_per_s": ("maximize", "decoding throughput with the KV cache (tokens/s), measured or predicted"),
    "peak_memory_mb": ("minimize", "peak tensor memory while serving (MiB), measured or predicted"),
    "train_step_ms": ("minimize", "one training step (ms), measured or predicted"),
}
#: Limit key: (objective, "max" or "min").
LIMITS = {
    "max_prefill_ms": ("prefill_ms", "max"),
    "min_decode_tokens_per_s": ("decode_tokens_per_s", "min"),
    "max_peak_memory_mb": ("peak_memory_mb", "max"),
}
#: What a trial records (copied to a trial that reuses an earlier one's result).
HW_ATTRS = ("hw_mode", *HW_OBJECTIVES, "decode_ms_per_step", "train_peak_memory_mb")


@dataclass(frozen=True, kw_only=True)
class HardwareConfig:
    """The recipe's ``hardware`` section."""

    mode: str = "measured"
    """``measured``: every new architecture is measured on ``device`` (seconds each); ``predicted``: the
    ``predictor`` file gives the values (microseconds each)."""
    predictor: str | None = None
    """A predictor file (or the folder holding ``predictor.json``) written by ``llmnas hw profile``; required with
    ``mode: predicted``. It must have been profiled on this device and for the recipe's space."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Measured mode: fields of :class:`~llmnas.hardware.measure.Settings` (``batch_size``, ``prompt_len``,
    ``new_tokens``, ``repeats``, ``threads``, ...). Predicted mode uses the predictor's own settings."""
    max_prefill_ms: float | None = None
    min_decode_tokens_per_s: float | None = None
    max_peak_memory_mb: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HardwareError(f"hardware.mode={self.mode!r}: not allowed (allowed: {', '.join(MODES)})")
        if self.mode == "predicted" and not self.predictor:
            raise HardwareError("hardware.predictor: missing (required with hardware.mode: predicted; write one with "
                                "llmnas hw profile SPACE --out DIR and give DIR/predictor.json)")
        if self.mode == "predicted" and self.settings:
            raise HardwareError("hardware.settings: only read with hardware.mode: measured (a predictor carries the "
                                "settings it was profiled with)")
        if self.predictor is not None and not Path(self.predictor).exists():
            raise HardwareError(f"hardware.predictor={self.predictor!r}: no such file (llmnas hw profile SPACE --out "
                                "DIR writes DIR/predictor.json)")
        try:
            resolve_device(self.device)
        except HardwareError as e:
            raise HardwareError(f"hardware.{e}") from None
        try:
            Settings(**self.settings)
        except TypeError as e:
            allowed = ", ".join(f.name for f in dataclasses.fields(Settings))
            raise HardwareError(f"hardware.settings: {e} (allowed: {allowed})") from None
        except HardwareError as e:
            raise HardwareError(f"hardware.settings: {e}") from None
        for key in LIMITS:
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise HardwareError(f"hardware.{key}={value!r}: must be a positive number or null")
        if self.max_peak_memory_mb is not None and self.settings.get("memory") is False:
            raise HardwareError("hardware.max_peak_memory_mb: needs the memory measurement (hardware.settings.memory "
                                "is false)")

    @property
    def limits(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in LIMITS if getattr(self, k) is not None}


def hardware_setup(cfg: HardwareConfig) -> dict[str, Any]:
    """What the study's set-up record holds of the ``hardware`` section: values from another predictor file,
    device, settings or caps are not comparable, so such a study is not resumed."""
    out: dict[str, Any] = {"mode": cfg.mode, "device": cfg.device, "settings": cfg.settings, "limits": cfg.limits}
    if cfg.predictor is not None:
        path = Path(cfg.predictor)
        path = path / "predictor.json" if path.is_dir() else path
        out["predictor_sha"] = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None
    return out


def needs_hardware(objectives: tuple[str, ...] | list[str], cfg: HardwareConfig | None) -> bool:
    return any(o in HW_OBJECTIVES for o in objectives) or (cfg is not None and bool(cfg.limits))


class HardwareScorer:
    """The hardware values of architectures for one search: predicted, or measured once per architecture."""

    def __init__(self, cfg: HardwareConfig, space: Any, source: str = "<recipe>") -> None:
        self.cfg, self.source = cfg, source
        self.predictor: LatencyPredictor | None = None
        if cfg.mode == "predicted":
            assert cfg.predictor is not None
            try:
                self.predictor = load_predictor(cfg.predictor, device=cfg.device, space=space)
            except LlmnasError as e:
                raise RecipeError(f"{source}: hardware.predictor: {e}") from None
            self.settings = self.predictor.settings
        else:
            self.settings = Settings(**cfg.settings)
        self._cache: dict[str, dict[str, float]] = {}

    def values(self, arch: Architecture) -> dict[str, float]:
        """``prefill_ms``, ``decode_tokens_per_s``, ``peak_memory_mb``, ... for ``arch`` (computed once per id)."""
        if arch.id not in self._cache:
            if self.predictor is not None:
                try:
                    self._cache[arch.id] = self.predictor.predict(arch)
                except HardwareError as e:
                    raise RecipeError(f"{self.source}: hardware.predictor: {e}") from None
            else:
                self._cache[arch.id] = measure_many([arch], self.cfg.device, self.settings)[0].values()
        return self._cache[arch.id]

    def attrs(self, arch: Architecture) -> dict[str, Any]:
        return {"hw_mode": self.cfg.mode, **self.values(arch)}

    def violations(self, values: dict[str, float]) -> list[str]:
        out = []
        for key, bound in self.cfg.limits.items():
            name, kind = LIMITS[key]
            v = values.get(name)
            if v is None:
                raise RecipeError(f"{self.source}: hardware.{key}: the {self.cfg.mode} values have no {name}")
            if (kind == "max" and v > bound) or (kind == "min" and v < bound):
                out.append(f"{name}: {v:.4g} {'>' if kind == 'max' else '<'} {key} {bound:g}")
        return out

    def optuna_values(self, values: dict[str, float]) -> dict[str, float]:
        """Optuna's constraint convention: one value per limit, <= 0 when met (relative to the bound)."""
        out = {}
        for key, bound in self.cfg.limits.items():
            name, kind = LIMITS[key]
            v = values[name]
            out[key] = (v - bound) / bound if kind == "max" else (bound - v) / bound
        return out

    # ------------------------------------------------------------------ can any architecture meet the caps?
    def check_feasible(self, space: Any) -> None:
        """Refuse caps no architecture of ``space`` can meet, before any trial.

        Predicted: the best value the predictor gives any architecture of the space (:func:`best_case`: exact, or
        a lower bound for the prefill), with the space's own parameter limits left out, so a cap beyond it is
        impossible by the predictor. Measured: the architecture of the space with the
        fewest FLOPs per token is measured; a cap it misses is refused, since no architecture is expected
        to run faster (a predictor gives the exact answer).

        Raises:
            RecipeError: naming the cap, its value and the best the space reaches.
        """
        limits = self.cfg.limits
        if not limits:
            return
        if self.predictor is not None:
            best = best_case(self.predictor, space)
            how = f"the best any architecture of space {space.name!r} reaches by the predictor"
        else:
            arch = fewest_flops(space)
            best = measure_many([arch], self.cfg.device, self.settings)[0].values()
            how = f"measured for the space's architecture with the fewest FLOPs per token ({arch.short()})"
        for key, bound in limits.items():
            name, kind = LIMITS[key]
            if name not in best:
                continue
            v = best[name]
            if (kind == "max" and v > bound) or (kind == "min" and v < bound):
                raise RecipeError(
                    f"{self.source}: hardware.{key}={bound:g}: no architecture can meet it ({name} {v:.4g} is "
                    f"{how}); {'raise' if kind == 'max' else 'lower'} the cap"
                )


def best_case(predictor: LatencyPredictor, space: Any) -> dict[str, float]:
    """The lowest prefill and decode-step latency, memory and training step the predictor gives any architecture
    of ``space`` (limits on parameters ignored), and the highest decode throughput; exact, except for the prefill,
    for which it is a lower bound (see below). No architecture of the space is predicted to do better.

    A prediction is ``c · features``, and every feature but the prefill's mask counts
    (:data:`~llmnas.hardware.predictor.MASK_FEATURES`) is a sum over layers plus a global part. Within a group of
    architectures sharing their global decisions the rest is ``base + sum of (attention term + FFN term)`` per
    layer, whose minimum is ``base + n * (min attention term + min FFN term)`` at the best depth ``n``. The mask
    features lie between 0 and their value with every layer's mask distinct, so their share is bounded below by
    ``min(0, c) * that value``.
    """
    from llmnas.hardware.predictor import MASK_FEATURES, TARGETS, features
    from llmnas.space.feasibility import groups

    best: dict[str, float] = {}
    s = predictor.settings
    for g in groups(space):
        a0, f0 = g.attn[0], g.ffn[0]
        worst_heads = max(a.n_heads for a in g.attn) if g.top["pos"] == "alibi" else 1

        def p(blocks: list[BlockSpec], g: Any = g) -> dict[str, float]:
            arch = g.arch(blocks)
            out = {}
            for t in predictor.coef:
                x = features(arch, s, t, predictor.table)
                names = TARGETS[t][1]
                x[[i for i, n in enumerate(names) if n in MASK_FEATURES]] = 0.0
                out[t] = float(x @ np.array(predictor.coef[t]))
            return out

        one, two = p([BlockSpec(a0, f0)]), p([BlockSpec(a0, f0)] * 2)
        attn = [p([BlockSpec(a, f0)]) for a in g.attn]
        ffn = [p([BlockSpec(a0, f)]) for f in g.ffn]
        for t in predictor.coef:
            base = 2 * one[t] - two[t]
            a_terms = np.array([x[t] - base for x in attn])
            f_terms = np.array([x[t] - one[t] for x in ffn])  # relative to f0
            per_layer = a_terms.min() + f_terms.min()
            coef = dict(zip(TARGETS[t][1], predictor.coef[t], strict=True))
            for n in g.depths:
                most = {"masks": float(n), "mask_melems": n * worst_heads * s.prompt_len**2 / 1e6}
                bound = sum(min(0.0, coef[k]) * most[k] for k in MASK_FEATURES if k in coef)
                best[t] = min(best.get(t, math.inf), base + n * per_layer + bound)
    if "decode_ms_per_step" in best:
        best["decode_tokens_per_s"] = 1e3 * predictor.settings.batch_size / max(best["decode_ms_per_step"], 1e-9)
    return best


def fewest_flops(space: Any) -> Architecture:
    """The architecture of ``space`` with the fewest forward FLOPs per token (parameter limits ignored)."""
    from llmnas.space.feasibility import groups

    best: tuple[float, Architecture] | None = None
    for g in groups(space):
        a = min(g.attn, key=lambda a: g.arch([BlockSpec(a, g.ffn[0])]).flops_per_token())
        f = min(g.ffn, key=lambda f: g.arch([BlockSpec(g.attn[0], f)]).flops_per_token())
        arch = g.arch([BlockSpec(a, f)] * g.depths[0])
        if best is None or arch.flops_per_token() < best[0]:
            best = (arch.flops_per_token(), arch)
    assert best is not None
    return best[1]
