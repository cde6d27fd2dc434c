"""End-of-search reports: the top-k table and, for multi-objective studies, the Pareto front."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from llmnas.search.study import ranked
from llmnas.space.arch import param_count_str


def top_table(study: optuna.Study, k: int, objective: str = "val_loss") -> str:
    """A Markdown table of the ``k`` best completed trials by the first objective, ``objective``.

    Trained (or supernet-evaluated) trials show their validation loss, bits per byte and training; trials
    scored by a proxy show the objective's value (``neg_synflow``) alone.
    """
    trained = objective in ("val_loss", "bits_per_byte")
    head = "| rank | trial | arch | layers | d_model | params |"
    if trained:
        lines = [f"{head} val loss | bits/byte | tokens | train s | note |",
                 "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    else:
        lines = [f"{head} {objective} | note |", "|---:|---:|---|---:|---:|---:|---:|---|"]
    for rank, t in enumerate(ranked(study)[:k], 1):
        a = t.user_attrs
        note = f"reused trial {a['reused_from']}" if "reused_from" in a else ""
        row = (f"| {rank} | {t.number} | {a.get('arch_id', '?')} | {a.get('n_layers', '?')} | "
               f"{a.get('d_model', '?')} | {param_count_str(a.get('params', 0))} |")
        if trained:
            bpb = a.get("bits_per_byte")
            row += (f" {a.get('val_loss', t.values[0]):.4f} | {'' if bpb is None else f'{bpb:.4f}'} | "
                    f"{a.get('tokens', 0):,} | {a.get('train_seconds', 0):.1f} |")
        else:
            row += f" {t.values[0]:.4f} |"
        lines.append(f"{row} {note} |")
    return "\n".join(lines)


def state_counts(study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def pareto_plots(study: optuna.Study, names: list[str], out_dir: Path) -> list[Path]:
    """Pareto front of a multi-objective study as ``pareto.html`` (plotly) and ``pareto.png`` (matplotlib).
    Optuna plots two or three objectives; with more, the plots show the front of the first two (the table
    from :func:`pareto_table` has them all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    kwargs: dict = {"target_names": names}
    if len(names) > 3:
        kwargs = {"target_names": names[:2], "targets": lambda t: (t.values[0], t.values[1])}
    fig = optuna.visualization.plot_pareto_front(study, **kwargs)
    html = out_dir / "pareto.html"
    fig.write_html(str(html), include_plotlyjs="cdn")
    written.append(html)
    ax = optuna.visualization.matplotlib.plot_pareto_front(study, **kwargs)
    png = out_dir / "pareto.png"
    ax.figure.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    written.append(png)
    return written


def pareto_table(study: optuna.Study, names: list[str]) -> str:
    front: list[FrozenTrial] = sorted(study.best_trials, key=lambda t: t.values)
    lines = ["| trial | arch | " + " | ".join(names) + " |", "|---:|---|" + "---:|" * len(names)]
    for t in front:
        values = " | ".join(f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}" for v in t.values)
        lines.append(f"| {t.number} | {t.user_attrs.get('arch_id', '?')} | {values} |")
    return "\n".join(lines)
