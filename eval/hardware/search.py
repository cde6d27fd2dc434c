"""Stage 3 of eval/hardware/run.py: validation loss against decode throughput, NSGA-II, front re-measured."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from optuna.trial import TrialState

from llmnas.hardware import measure_many
from llmnas.hardware.predictor import LatencyPredictor, error_stats
from llmnas.recipe import load_recipe
from llmnas.search import load_study, run_search, trial_arch


def run_search_stage(out: Path, predictor_path: Path, n_trials: int, log: Callable[[str], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "search.json"
    if result_path.exists():
        log(f"search: done before ({result_path})")
        return
    overrides = ["hardware.mode=predicted", f"hardware.predictor={predictor_path}", "hardware.settings={}",
                 f"run_dir={out / 'runs'}", f"search.n_trials={n_trials}"]
    recipe = load_recipe("hw_quickstart", overrides)
    if (recipe.study_dir / "study.db").exists() and len(load_study(recipe.study_dir).trials) >= n_trials:
        study, seconds = load_study(recipe.study_dir), None  # searched before: re-measure and plot only
        log(f"search: {recipe.study_dir} holds its {n_trials} trials already")
    else:
        log(f"search: {n_trials} trials of hw_quickstart (NSGA-II, decode tokens/s predicted by {predictor_path})")
        summary = run_search(recipe, show_progress=True)
        study, seconds = summary.study, summary.seconds
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    front, seen = [], set()
    for t in sorted(study.best_trials, key=lambda t: (t.values[0], t.number)):
        if t.user_attrs["arch_id"] not in seen:  # a repeated architecture (reused trial) once
            seen.add(t.user_attrs["arch_id"])
            front.append(t)
    predictor = LatencyPredictor.read(predictor_path)
    log(f"search: re-measuring the {len(front)} front architectures")
    archs = [trial_arch(t) for t in front]
    measured = measure_many(archs, "cpu", predictor.settings, seed=7)
    rows = []
    for t, arch, m in zip(front, archs, measured, strict=True):
        rows.append({"trial": t.number, "arch_id": arch.id, "arch": arch.short(), "val_loss": t.values[0],
                     "params": arch.param_counts().total, "predicted_tokens_per_s": t.values[1],
                     "measured_tokens_per_s": m.decode_tokens_per_s.median,
                     "measured_spread": m.decode_tokens_per_s.spread, "measured_prefill_ms": m.prefill_ms.median,
                     "predicted_prefill_ms": t.user_attrs.get("prefill_ms"),
                     "measured_peak_memory_mb": m.peak_memory_mb})
    pred = np.array([r["predicted_tokens_per_s"] for r in rows])
    meas = np.array([r["measured_tokens_per_s"] for r in rows])
    result = {
        "recipe": "hw_quickstart", "overrides": overrides, "n_trials": len(study.trials), "completed": len(done),
        "search_seconds": seconds, "predictor": str(predictor_path), "front": rows,
        "front_error": error_stats(pred, meas) if len(rows) >= 3 else None,
        "all": [{"trial": t.number, "val_loss": t.values[0], "tokens_per_s": t.values[1]} for t in done],
    }
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out)


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    allx = [r["tokens_per_s"] for r in result["all"]]
    ally = [r["val_loss"] for r in result["all"]]
    front = result["front"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(allx, ally, c="lightgray", label="trials (predicted tokens/s)")
    ax.plot([r["predicted_tokens_per_s"] for r in front], [r["val_loss"] for r in front], "o-", c="tab:blue",
            label="Pareto front, predicted")
    ax.scatter([r["measured_tokens_per_s"] for r in front], [r["val_loss"] for r in front], marker="x", c="tab:red",
               label="front, re-measured")
    for r in front:
        ax.annotate(f"{r['params'] / 1e6:.2f}M", (r["measured_tokens_per_s"], r["val_loss"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("decode tokens/s (batch 1, KV cache, 1 thread)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("hw_quickstart: loss vs decode throughput (NSGA-II)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    figure = go.Figure()
    figure.add_scatter(x=allx, y=ally, mode="markers", name="trials (predicted)", marker={"color": "lightgray"})
    figure.add_scatter(x=[r["predicted_tokens_per_s"] for r in front], y=[r["val_loss"] for r in front],
                       mode="lines+markers", name="front, predicted", text=[r["arch"] for r in front])
    figure.add_scatter(x=[r["measured_tokens_per_s"] for r in front], y=[r["val_loss"] for r in front],
                       mode="markers", name="front, re-measured", marker={"symbol": "x"},
                       text=[r["arch"] for r in front])
    figure.update_layout(xaxis_title="decode tokens/s", yaxis_title="validation loss")
    figure.write_html(str(out / "pareto.html"), include_plotlyjs="cdn")


def search_markdown(result: dict) -> str:
    lines = ["## Loss vs decode throughput search (hw_quickstart, NSGA-II)", "",
             f"{result['completed']} completed trials of {result['n_trials']}; {len(result['front'])} on the front, "
             "each re-measured (15 interleaved repeats).", "",
             "| trial | architecture | params | val loss | tokens/s predicted | tokens/s measured | error |",
             "|---|---|---|---|---|---|---|"]
    for r in result["front"]:
        err = r["predicted_tokens_per_s"] / r["measured_tokens_per_s"] - 1
        lines.append(f"| {r['trial']} | `{r['arch']}` | {r['params'] / 1e6:.2f}M | {r['val_loss']:.3f} | "
                     f"{r['predicted_tokens_per_s']:.0f} | {r['measured_tokens_per_s']:.0f} | {err:+.1%} |")
    e = result.get("front_error")
    if e:
        lines += ["", f"Front re-measured: {e['within_10pct']:.0%} within ±10 % of the prediction, Spearman ρ "
                  f"{e['spearman']:.3f}."]
    return "\n".join(lines)
