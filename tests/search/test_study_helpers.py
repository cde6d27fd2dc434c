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
