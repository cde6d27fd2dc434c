"""A latency predictor: the per-block look-up table plus a small regression over architecture features.

For each target the prediction is ``c · features(arch)``, where the features are the look-up table's sum
over the architecture's parts (:mod:`llmnas.hardware.lut`) and counts from the spec (depth, FLOPs,
parameters, KV-cache bytes, routed experts). The table carries what each part costs alone; the regression
carries what the sum misses (the per-layer Python and dispatch overhead, caches, the share of the work a part's
isolated timing over- or under-states). The coefficients minimise the squared *relative* error on the
measured training architectures (a small ridge keeps them stable), so a fast model's error counts as
much as a slow one's.

Every feature is a sum over the layers plus a part fixed by the global decisions, so a prediction is too:
the fastest architecture a space allows can be found exactly (:func:`llmnas.hardware.objectives.best_case`),
except for the prefill's attention masks, built once per distinct mask of a forward pass (two features count
them; the best case bounds their share).

A predictor file (JSON) holds the table, the coefficients, the settings, the device description and the
space it was fitted for, and the error it made on held-out architectures. :func:`load_predictor` refuses it
on another device or for another space.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmnas.hardware.device import HardwareError, describe_device, same_device, short
from llmnas.hardware.lut import block_keys, lut_sum
from llmnas.hardware.measure import Settings
from llmnas.space.arch import Architecture, MoEFFN

FORMAT = "llmnas.hw-predictor/1"
#: Targets the predictor fits, with the table it reads (``None``: counts alone) and its features.
TARGETS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "prefill_ms": ("prefill", ("one", "lut", "layers", "gflops", "mparams_active", "experts", "moe_layers", "masks",
                               "mask_melems")),
    "decode_ms_per_step": ("decode", ("one", "lut", "layers", "mflops", "mparams_active", "kv_mb", "experts",
                                      "moe_layers")),
    "peak_memory_mb": (None, ("one", "params_mb", "kv_mb", "layers", "width_mb")),
    "train_step_ms": (None, ("one", "train_gflops", "mparams", "layers")),
}
RIDGE = 1e-4
#: Features that are not a sum over layers: the attention masks a forward pass builds once for each distinct
#: (window, ALiBi heads) among its layers (the table times a part with its mask already built).
MASK_FEATURES = ("masks", "mask_melems")


def space_identity(space: Any) -> dict[str, Any]:
    """What ties a predictor to a space: its choices, vocabulary and sequence length (not its limits)."""
    info = space.describe()
    core = {k: info[k] for k in ("global", "layer", "uniform", "vocab_size", "max_seq_len")}
    digest = hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {"name": info["name"], "fingerprint": digest, "vocab_size": info["vocab_size"],
            "max_seq_len": info["max_seq_len"]}


def features(arch: Architecture, settings: Settings, target: str, table: dict[str, dict[str, float]]) -> np.ndarray:
    """The feature vector of ``arch`` for ``target`` (in the order of :data:`TARGETS`)."""
    s = settings
    mode, names = TARGETS[target]
    counts = arch.param_counts()
    mid = s.prompt_len + s.new_tokens // 2
    bytes_per = 2 if s.dtype in ("bfloat16", "float16") else 4
    t_train = s.train_seq_len or arch.max_seq_len
    masks = {(b.attn.window, b.attn.n_heads if arch.pos == "alibi" else 0) for b in arch.blocks}
    masks.discard((None, 0))  # plain causal attention needs no mask
    moe = [b.ffn for b in arch.blocks if isinstance(b.ffn, MoEFFN)]
    values = {
        "experts": float(sum(f.n_experts for f in moe)),
        "moe_layers": float(len(moe)),
        "masks": float(len(masks)),
        "mask_melems": sum(max(h, 1) for _, h in masks) * s.prompt_len**2 / 1e6,
        "one": 1.0,
        "lut": lut_sum(arch, table, mode) if mode else 0.0,
        "layers": float(arch.n_layers),
        "gflops": arch.flops_per_token(s.prompt_len) * s.prompt_len * s.batch_size / 1e9,
        "mflops": arch.flops_per_token(mid) * s.batch_size / 1e6,
        "mparams_active": counts.active / 1e6,
        "mparams": counts.total / 1e6,
        "params_mb": counts.total * bytes_per / 2**20,
        "kv_mb": arch.kv_cache_bytes_per_token(bytes_per) * (s.prompt_len + s.new_tokens) * s.batch_size / 2**20,
        "width_mb": arch.n_layers * arch.d_model * s.prompt_len * s.batch_size * bytes_per / 2**20,
        "train_gflops": 3 * arch.flops_per_token(t_train) * t_train * s.train_batch_size / 1e9,
    }
    return np.array([values[n] for n in names], dtype=np.float64)


def fit_target(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients minimising the squared relative error ``sum(((X c - y) / y)^2)`` plus a small ridge on the
    standardised non-constant columns."""
    A = X / y[:, None]
    scale = np.where(X.std(0) > 0, X.std(0), 1.0)
    scale[0] = 1.0
    As = A / scale
    reg = RIDGE * len(y) * np.eye(X.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.solve(As.T @ As + reg, As.T @ np.ones(len(y)))
    return coef / scale


def error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Share within ±10 % (and ±5 %, ±20 %), Spearman's ρ, Kendall's τ and the mean absolute relative error."""
    from scipy.stats import kendalltau, spearmanr

    rel = np.abs(predicted / measured - 1)
    return {
        "n": int(len(measured)),
        "within_5pct": float(np.mean(rel <= 0.05)),
        "within_10pct": float(np.mean(rel <= 0.10)),
        "within_20pct": float(np.mean(rel <= 0.20)),
        "spearman": float(spearmanr(predicted, measured).statistic),
        "kendall": float(kendalltau(predicted, measured).statistic),
        "mape": float(np.mean(rel)),
    }


@dataclass
class LatencyPredictor:
    """Predicts ``prefill_ms``, ``decode_tokens_per_s``, ``peak_memory_mb`` (and ``train_step_ms`` when it was
    measured) for architectures of one space on one device."""

    device: dict[str, Any]
    space: dict[str, Any]
    settings: Settings
    table: dict[str, dict[str, float]]
    coef: dict[str, list[float]]
    report: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @classmethod
    def fit(cls, archs: list[Architecture], measured: list[dict[str, float]], table: dict[str, dict[str, float]],
            settings: Settings, device: dict[str, Any], space: dict[str, Any]) -> LatencyPredictor:
        """Fit every target ``measured`` holds (dicts of :meth:`Measurement.values`) on ``archs``."""
        coef = {}
        for target in TARGETS:
            rows = [(a, m[target]) for a, m in zip(archs, measured, strict=True) if m.get(target)]
            if len(rows) < len(TARGETS[target][1]) + 2:  # too few to fit (and to test) this target
                continue
            X = np.stack([features(a, settings, target, table) for a, _ in rows])
            y = np.array([v for _, v in rows])
            coef[target] = fit_target(X, y).tolist()
        return cls(device=device, space=space, settings=settings, table=table, coef=coef)

    def check(self, arch: Architecture) -> None:
        missing = [k for k in dict.fromkeys(block_keys(arch)) if k not in self.table]
        if missing:
            raise HardwareError(
                f"predictor {self.path or ''} has no look-up entry for {len(missing)} part(s) of architecture "
                f"{arch.id}, e.g. {missing[0]}: it was profiled for space {self.space['name']!r} (vocab_size "
                f"{self.space['vocab_size']}, max_seq_len {self.space['max_seq_len']}); profile this space with "
                "llmnas hw profile"
            )

    def predict_target(self, arch: Architecture, target: str) -> float:
        return float(features(arch, self.settings, target, self.table) @ np.array(self.coef[target]))

    def predict(self, arch: Architecture) -> dict[str, float]:
        """Every fitted target for ``arch``; decode is given as ``decode_tokens_per_s`` (and per step)."""
        self.check(arch)
        out = {t: self.predict_target(arch, t) for t in self.coef}
        if "decode_ms_per_step" in out:
            step = max(out["decode_ms_per_step"], 1e-9)
            out["decode_tokens_per_s"] = 1e3 * self.settings.batch_size / step
        return out

    def lut_only(self, arch: Architecture) -> dict[str, float]:
        """The table's sums alone (no regression): what the parts cost in isolation."""
        return {"prefill_ms": lut_sum(arch, self.table, "prefill"),
                "decode_ms_per_step": lut_sum(arch, self.table, "decode")}

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.device, "space": self.space, "settings": self.settings.to_dict(),
                "coef": {t: {"features": list(TARGETS[t][1]), "values": c} for t, c in self.coef.items()},
                "report": self.report, "table": self.table}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        self.path = str(path)

    @classmethod
    def read(cls, path: str | Path) -> LatencyPredictor:
        """Read a predictor file without checking the device or space (see :func:`load_predictor`)."""
        path = Path(path)
        if path.is_dir():
            path = path / "predictor.json"
        if not path.is_file():
            raise HardwareError(f"predictor file {path}: not found (llmnas hw profile SPACE --out DIR writes "
                                "DIR/predictor.json)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HardwareError(f"predictor file {path}: not readable JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise HardwareError(f"predictor file {path}: format {got!r} is not {FORMAT!r}")
        try:
            coef = {}
            for t, c in data["coef"].items():
                if t not in TARGETS or list(c["features"]) != list(TARGETS[t][1]):
                    raise HardwareError(f"predictor file {path}: target {t!r} with features {c['features']} is not "
                                        "this version's")
                coef[t] = [float(v) for v in c["values"]]
            return cls(device=data["device"], space=data["space"], settings=Settings.from_dict(data["settings"]),
                       table=data["table"], coef=coef, report=data.get("report", {}), path=str(path))
        except (KeyError, TypeError, AttributeError) as e:
            raise HardwareError(f"predictor file {path}: malformed ({type(e).__name__}: {e})") from None


def load_predictor(path: str | Path, *, device: str = "cpu", space: Any = None) -> LatencyPredictor:
    """Read a predictor file and check that it was fitted on this device (with the threads and dtype it
    records) and, with ``space``, for that space.

    Raises:
        HardwareError: missing or malformed file, another device, another space.
    """
    predictor = LatencyPredictor.read(path)
    here = describe_device(device, predictor.settings.threads, predictor.settings.dtype)
    differs = same_device(predictor.device, here)
    if differs:
        raise HardwareError(
            f"predictor file {predictor.path}: fitted on another device ({'; '.join(differs)}); it was profiled on "
            f"{short(predictor.device)}, this is {short(here)}: profile this device with llmnas hw profile"
        )
    if space is not None:
        mine = space_identity(space)
        if mine["fingerprint"] != predictor.space["fingerprint"]:
            what = [f"{k} {predictor.space.get(k)!r} != {mine[k]!r}" for k in ("name", "vocab_size", "max_seq_len")
                    if predictor.space.get(k) != mine[k]] or ["its choices differ"]
            raise HardwareError(
                f"predictor file {predictor.path}: fitted for another space ({'; '.join(what)}): profile space "
                f"{mine['name']!r} with llmnas hw profile"
            )
    return predictor
