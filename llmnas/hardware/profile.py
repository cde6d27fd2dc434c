"""``profile_space``: measure a sample of a space, fit the latency predictor, report its held-out error.

1. The look-up table: every part any architecture of the space can have, timed once (:mod:`llmnas.hardware.lut`).
2. ``n`` distinct architectures sampled from the space (meeting its constraints), measured whole
   (:func:`~llmnas.hardware.measure.measure_many`).
3. A seeded split: ``1 - holdout`` of them fit the regression; the error is reported on the others, which the
   fit never saw, with the table's sums alone and FLOPs and parameter counts beside it.

The folder gets ``measurements.jsonl`` (one line per architecture: its JSON, its figures, its split),
``predictor.json`` and ``report.json``/``report.md``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmnas.hardware.device import HardwareError, describe_device, resolve_device
from llmnas.hardware.lut import measure_parts, space_parts
from llmnas.hardware.measure import Settings, measure_many
from llmnas.hardware.predictor import TARGETS, LatencyPredictor, error_stats, space_identity
from llmnas.space.arch import Architecture

#: What the report compares, per target: the predictor, the table's sum alone, FLOPs alone, parameters alone.
REPORTED = ("prefill_ms", "decode_tokens_per_s", "peak_memory_mb", "train_step_ms")
#: Fewest architectures that fit every target (the largest feature set plus two).
MIN_FIT = max(len(names) for _, names in TARGETS.values()) + 2


def sample_archs(space: Any, n: int, seed: int) -> list[Architecture]:
    """``n`` distinct architectures of ``space`` (by id), sampled with ``seed``."""
    rng = np.random.default_rng(seed)
    out: dict[str, Architecture] = {}
    for _ in range(50 * n):
        arch = space.sample(rng)
        out.setdefault(arch.id, arch)
        if len(out) == n:
            return list(out.values())
    raise HardwareError(f"space {space.name!r} holds fewer than {n} distinct architectures within its limits")


def split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the fitting set and the held-out set (a seeded shuffle)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = round(n * holdout)
    return sorted(order[k:]), sorted(order[:k])


def evaluate(predictor: LatencyPredictor, archs: list[Architecture], measured: list[dict[str, float]]) -> dict:
    """Error of the predictor on ``archs`` per target, with the table alone, FLOPs alone and parameters alone
    (Spearman's ρ for those: they rank, they do not predict milliseconds)."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    preds = [predictor.predict(a) for a in archs]
    for target in REPORTED:
        rows = [i for i, m in enumerate(measured) if m.get(target) and target in preds[i]]
        if len(rows) < 3:
            continue
        y = np.array([measured[i][target] for i in rows])
        p = np.array([preds[i][target] for i in rows])
        entry = {"predictor": error_stats(p, y)}
        if target in ("prefill_ms", "decode_tokens_per_s"):
            step = "prefill_ms" if target == "prefill_ms" else "decode_ms_per_step"
            lut = np.array([predictor.lut_only(archs[i])[step] for i in rows])
            if target == "decode_tokens_per_s":
                lut = 1e3 * predictor.settings.batch_size / lut
            # the table's sum rescaled by one factor (fitted on these rows: an optimistic bound for it)
            entry["lut_only"] = error_stats(lut * float(np.median(y / lut)), y)
        sign = -1.0 if target == "decode_tokens_per_s" else 1.0  # more FLOPs: fewer tokens per second
        s = predictor.settings
        flops = np.array([archs[i].flops_per_token(s.prompt_len) for i in rows])
        params = np.array([archs[i].param_counts().total for i in rows])
        active = np.array([archs[i].param_counts().active for i in rows])
        entry["spearman_flops_alone"] = float(spearmanr(sign * flops, y).statistic)
        entry["spearman_params_alone"] = float(spearmanr(sign * params, y).statistic)
        entry["spearman_active_params_alone"] = float(spearmanr(sign * active, y).statistic)
        out[target] = entry
    return out


def profile_space(
    space: Any,
    n: int,
    out: str | Path,
    *,
    device: str = "cpu",
    settings: Settings | None = None,
    holdout: float = 0.5,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> LatencyPredictor:
    """Measure, fit and report (see the module's description); returns the fitted predictor (also saved)."""
    settings = settings or Settings()
    dev = resolve_device(device)
    if not 0 < holdout < 1:
        raise HardwareError(f"holdout={holdout!r}: must be a fraction in (0, 1)")
    n_test = round(n * holdout)
    if n - n_test < MIN_FIT or n_test < 3:
        raise HardwareError(
            f"n={n} with holdout={holdout:g} leaves {n - n_test} architectures to fit and {n_test} to test; at least "
            f"{MIN_FIT} and 3 are needed (e.g. --n {max(2 * MIN_FIT, 20)})"
        )
    archs = sample_archs(space, n, seed)
    for arch in archs[:1]:
        settings.check(arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts = space_parts(space)
    log(f"look-up table: {len(parts)} distinct parts of space {space.name!r}")
    table = measure_parts(parts, dev, settings, seed=seed,
                          progress=lambda i, k: log(f"  table {i}/{k} ({time.perf_counter() - started:.0f} s)"))
    log(f"measuring {n} architectures ({settings.repeats} interleaved repeats each)")
    ms = measure_many(archs, dev, settings, seed=seed,
                      progress=lambda i, k: log(f"  measured {i}/{k} ({time.perf_counter() - started:.0f} s)"))
    fit_idx, _ = split(n, holdout, seed)
    with open(out / "measurements.jsonl", "w") as f:
        for i, (arch, m) in enumerate(zip(archs, ms, strict=True)):
            row = {"arch": arch.to_dict(), "split": "fit" if i in fit_idx else "holdout", **m.to_dict()}
            f.write(json.dumps(row, sort_keys=True) + "\n")
    description = describe_device(dev, settings.threads, settings.dtype)
    return fit_and_report(out, space_identity(space), description, settings, table, seed,
                          seconds=time.perf_counter() - started)


def fit_and_report(out: Path, space_id: dict[str, Any], description: dict[str, Any], settings: Settings,
                   table: dict[str, dict[str, float]], seed: int, seconds: float | None = None) -> LatencyPredictor:
    """Fit the predictor on the ``fit`` rows of ``out/measurements.jsonl``, score it on the ``holdout`` rows and
    write ``predictor.json`` and the report (also used to refit measurements taken before)."""
    rows = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    archs = [Architecture.from_dict(r["arch"]) for r in rows]
    values = [measured_values(r) for r in rows]
    fit_idx = [i for i, r in enumerate(rows) if r["split"] == "fit"]
    test_idx = [i for i, r in enumerate(rows) if r["split"] == "holdout"]
    predictor = LatencyPredictor.fit([archs[i] for i in fit_idx], [values[i] for i in fit_idx], table, settings,
                                     description, space_id)
    predictor.report = {
        "n_fit": len(fit_idx),
        "n_holdout": len(test_idx),
        "seed": seed,
        "holdout": evaluate(predictor, [archs[i] for i in test_idx], [values[i] for i in test_idx]),
        "repeat_spread": repeat_spread(rows),
        **({"seconds": round(seconds, 1)} if seconds is not None else {}),
    }
    predictor.save(out / "predictor.json")
    (out / "report.json").write_text(json.dumps(predictor.report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(predictor) + "\n")
    return predictor


def refit(out: str | Path) -> LatencyPredictor:
    """Fit again the predictor of a profile folder from its measurements and table (after a change of features)."""
    out = Path(out)
    old = json.loads((out / "predictor.json").read_text())  # read raw: its coefficients may be another version's
    report = old.get("report", {})
    return fit_and_report(out, old["space"], old["device"], Settings.from_dict(old["settings"]), old["table"],
                          report.get("seed", 0), report.get("seconds"))


def measured_values(row: dict[str, Any]) -> dict[str, float]:
    """The figures of a ``measurements.jsonl`` row as :meth:`Measurement.values` gives them."""
    out = {}
    for key in ("prefill_ms", "decode_tokens_per_s", "decode_ms_per_step", "train_step_ms"):
        if row.get(key):
            out[key] = row[key]["median"]
    for key in ("peak_memory_mb", "train_peak_memory_mb"):
        if row.get(key) is not None:
            out[key] = row[key]
    return out


def repeat_spread(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median over architectures of each figure's interquartile range relative to its median."""
    out = {}
    for key in ("prefill_ms", "decode_tokens_per_s", "train_step_ms"):
        spreads = [r[key]["spread"] for r in rows if r.get(key)]
        if spreads:
            out[key] = float(np.median(spreads))
    return out


def report_markdown(predictor: LatencyPredictor) -> str:
    """The held-out error as a Markdown table."""
    r = predictor.report
    lines = [
        f"Predictor for space `{predictor.space['name']}` on {predictor.device['cpu_model']}"
        f"{' / ' + predictor.device['gpu_name'] if predictor.device.get('gpu_name') else ''}, "
        f"{predictor.device['threads']} thread(s), {predictor.settings.dtype}; fitted on {r['n_fit']} architectures, "
        f"tested on {r['n_holdout']} held out.",
        "",
        "| target | within ±10 % | within ±20 % | Spearman ρ | mean abs. rel. error | table alone: ±10 % / ρ | "
        "ρ FLOPs alone | ρ params alone |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, e in r["holdout"].items():
        p = e["predictor"]
        lut = e.get("lut_only")
        lut_text = f"{lut['within_10pct']:.0%} / {lut['spearman']:.3f}" if lut else "–"
        lines.append(
            f"| {target} | {p['within_10pct']:.0%} | {p['within_20pct']:.0%} | {p['spearman']:.3f} | "
            f"{p['mape']:.1%} | {lut_text} | {e['spearman_flops_alone']:.3f} | {e['spearman_params_alone']:.3f} |"
        )
    spread = r.get("repeat_spread", {})
    if spread:
        lines += ["", "Spread of repeated timings (median over architectures of IQR / median): "
                  + ", ".join(f"{k} {v:.1%}" for k, v in spread.items()) + "."]
    return "\n".join(lines)
