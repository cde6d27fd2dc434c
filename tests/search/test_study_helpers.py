"""Small study helpers used by the benchmarks and the CLI."""

from __future__ import annotations

import optuna

from llmnas.search.study import best_distinct


def test_best_distinct_counts_a_repeated_architecture_once() -> None:
    study = optuna.create_study()
    for value, arch in ((3.0, "a"), (1.0, "b"), (1.5, "b"), (2.0, "c"), (0.5, "d")):
        trial = study.ask()
        trial.set_user_attr("arch_id", arch)
        study.tell(trial, value)
    assert [t.user_attrs["arch_id"] for t in best_distinct(study, 3)] == ["d", "b", "c"]
    assert len(best_distinct(study, 10)) == 4


def test_pareto_plots_of_four_objectives_show_the_front_of_the_first_two(tmp_path) -> None:
    from llmnas.search.report import pareto_plots

    study = optuna.create_study(directions=["minimize"] * 4)
    for values in ((1, 4, 0, 0), (2, 3, 0, 0), (3, 3.5, 0, 0), (4, 1, 9, 9), (0.5, 9, 5, 5)):
        study.tell(study.ask(), list(values))
    written = pareto_plots(study, ["val_loss", "params", "prefill_ms", "peak_memory_mb"], tmp_path)
    assert sorted(p.name for p in written) == ["pareto.html", "pareto.png"]
    html = (tmp_path / "pareto.html").read_text()
    assert "val_loss" in html and "params" in html and "prefill_ms" not in html
