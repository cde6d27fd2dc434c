from __future__ import annotations

import json

import numpy as np
import pytest

from llmnas.benchmarks import BenchConfig, hypervolume_2d, load_nb201, reference_rows, run_one, search_signal
from llmnas.cli import main
from llmnas.errors import RecipeError
from tests.benchmarks.test_nb201_tables import write_tables
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return load_nb201(shared_data("nasbench201"), cache_dir=tmp_path_factory.mktemp("cache"))


def test_cli_accuracy_run_writes_table_json_and_plot(tmp_path, capsys) -> None:
    data = shared_data("nasbench201")
    out = tmp_path / "out"
    code = main(["bench", "nb201", "--data", str(data), "--cache-dir", str(tmp_path / "cache"),
                 "--dataset", "cifar10,cifar100", "--budget", "30", "--seeds", "3", "--workers", "2",
                 "--strategies", "random,evolution,reinforce,thompson", "--option", "evolution.population_size=10",
                 "--option", "evolution.sample_size=4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| thompson |" in printed and "REINFORCE (NAS-Bench-201 paper)" in printed and "93.85 ± 0.37" in printed
    md = (out / "nb201.md").read_text()
    assert md in printed and "| CIFAR-10 | CIFAR-100 |" in md
    payload = json.loads((out / "nb201.json").read_text())
    assert payload["config"]["options"] == {"evolution": {"population_size": 10, "sample_size": 4}}
    runs = payload["runs"]
    assert set(runs) == {f"{s}/{d}" for d in ("cifar10", "cifar100")
                         for s in ("random", "evolution", "reinforce", "thompson")}
    for key, cell in runs.items():
        assert cell["seed"] == [0, 1, 2]
        assert all(1.0 <= x <= {"cifar10": 94.38, "cifar100": 73.52}[key.split("/")[1]] for x in cell["score"])
        assert all(d <= 30 for d in cell["distinct"]) and all(i >= 0 for i in cell["index"])
        if not key.startswith("random"):
            assert cell["distinct"] == [30, 30, 30]  # the llmnas samplers never evaluate a cell twice
    summary = payload["summary"]["thompson/cifar10"]
    assert len(summary["curve_mean"]) == 30 and summary["curve_mean"][-1] == pytest.approx(summary["mean"])
    assert np.all(np.diff(summary["curve_mean"]) > -1.0)
    assert (out / "nb201.png").stat().st_size > 10_000


def test_run_one_reports_the_test_accuracy_of_the_best_validation_cell(table) -> None:
    config = BenchConfig(datasets=("cifar10",), strategies=("thompson",), budget=25, seeds=1, workers=1)
    r = run_one(table, config, "cifar10", "thompson", seed=0)
    val = np.round(table.val12["cifar10"], 4)
    assert r.ties == 1 and r.val == val[r.index] and r.score == table.test200["cifar10"][r.index]
    assert r.curve[-1] == r.score and len(r.curve) == 25


def test_runs_that_find_the_cifar100_tie_score_its_expectation(table) -> None:
    """Cells 10165 and 13714 tie at 3,066/5,000 validation images (test 72.28 and 73.09): a run that finds
    both reports their mean, whichever it found first; the exhaustive reference row reports the same."""
    config = BenchConfig(datasets=("cifar100",), strategies=("thompson",), budget=100, seeds=1, workers=1)
    test = table.test200["cifar100"]
    expected = (test[10165] + test[13714]) / 2
    runs = [run_one(table, config, "cifar100", "thompson", seed) for seed in range(6)]
    tied = [r for r in runs if r.ties == 2]
    assert tied and {r.index for r in tied} <= {10165, 13714}
    for r in tied:
        assert r.val == 61.32 and r.score == pytest.approx(expected) and r.score != test[r.index]
    rows = reference_rows(table, config)
    assert rows["exhaustive search on the 12-epoch signal (expected over its ties)"]["cifar100"] == pytest.approx(
        expected)
    assert round(expected, 2) == 72.69


def test_score_val_reports_the_best_validation_accuracy(table) -> None:
    config = BenchConfig(datasets=("imagenet16-120",), strategies=("evolution",), budget=30, seeds=1, workers=1,
                         score="val")
    r = run_one(table, config, "imagenet16-120", "evolution", seed=3)
    signal = search_signal(table.val12["imagenet16-120"])
    assert r.score == r.val == signal[r.index] and list(r.curve) == sorted(r.curve)
    assert reference_rows(table, config) == {"table optimum (best validation accuracy)": {
        "imagenet16-120": float(signal.max())}}


def test_hardware_aware_modes(tmp_path, table) -> None:
    pareto = BenchConfig(datasets=("cifar10",), strategies=("random", "evolution"), budget=20, seeds=2,
                         device="pixel3", workers=1)
    r = run_one(table, pareto, "cifar10", "evolution", seed=0)
    assert 0.0 < r.curve[0] <= r.curve[-1] <= 1.0 and list(r.curve) == sorted(r.curve)

    cap = BenchConfig(datasets=("cifar100",), strategies=("thompson",), budget=20, seeds=1, device="pixel3",
                      latency_cap=15.0, workers=1)
    r = run_one(table, cap, "cifar100", "thompson", seed=0)
    assert table.latency_of("pixel3")[r.index] <= 15.0
    feasible = table.latency_of("pixel3") <= 15.0
    rows = reference_rows(table, cap)
    signal = search_signal(table.val12["cifar100"])
    ties = np.flatnonzero(feasible & (signal == signal[feasible].max()))
    assert rows["exhaustive search on the 12-epoch signal (expected over its ties)"]["cifar100"] == pytest.approx(
        table.test200["cifar100"][ties].mean())

    data = shared_data("nasbench201")
    for extra in (["--device", "pixel3"], ["--device", "pixel3", "--latency-cap", "15"]):
        out = tmp_path / extra[-1]
        assert main(["bench", "nb201", "--data", str(data), "--cache-dir", "none", "--dataset", "imagenet16-120",
                     "--budget", "15", "--seeds", "2", "--workers", "1", "--strategies", "random,thompson",
                     "--out", str(out), *extra]) == 0
        files = sorted(p.name for p in out.iterdir())
        assert len(files) == 3 and all("pixel3" in f for f in files)
        payload = json.loads(next(out.glob("*.json")).read_text())
        assert payload["config"]["mode"] == ("cap" if "--latency-cap" in extra else "pareto")


def test_labels_run_one_sampler_under_several_settings(table) -> None:
    config = BenchConfig(datasets=("cifar10",), strategies=("evolution", "small=evolution"), budget=12, seeds=1,
                         workers=1, options={"small": {"population_size": 4, "sample_size": 2}})
    assert config.labels == ("evolution", "small") and config.sampler_of("small") == "evolution"
    config.validate(table)
    assert run_one(table, config, "cifar10", "small", 0).distinct == 12
    with pytest.raises(RecipeError, match="distinct"):
        BenchConfig(strategies=("evolution", "evolution")).validate(table)


def test_cli_score_val_writes_a_validation_table(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["bench", "nb201", "--data", str(shared_data("nasbench201")), "--cache-dir", "none", "--dataset",
                 "cifar10", "--budget", "20", "--seeds", "3", "--seed", "1000", "--workers", "1", "--strategies",
                 "random,thompson", "--score", "val", "--out", str(out)]) == 0
    md = (out / "nb201_val.md").read_text()
    assert "best 12-epoch validation accuracy (%) found" in md and "3 seeds (1000–1002)" in md
    assert "paper" not in md and "test accuracy" not in md  # no test figure anywhere in a tuning table
    payload = json.loads((out / "nb201_val.json").read_text())
    assert payload["config"]["score"] == "val" and payload["runs"]["thompson/cifar10"]["seed"] == [1000, 1001, 1002]
    assert sorted(p.name for p in out.iterdir()) == ["nb201_val.json", "nb201_val.md", "nb201_val.png"]


def test_hypervolume_2d() -> None:
    a, b = np.array([1.0, 0.5, 0.2]), np.array([0.2, 0.5, 1.0])
    assert hypervolume_2d(a, b) == pytest.approx(0.2 + 0.5 * 0.3 + 0.2 * 0.5)
    assert hypervolume_2d(np.array([1.0, 0.5]), np.array([1.0, 0.5])) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategies", "random,annealing"], "unknown strategy 'annealing'"),
        (["--option", "evolution.population=3", "--strategies", "evolution"], "no option 'population'"),
        (["--option", "evolution-population=3"], "STRATEGY.KEY=VALUE"),
        (["--dataset", "mnist"], "not a NAS-Bench-201 data set"),
        (["--device", "abacus"], "no latency for device 'abacus'"),
        (["--latency-cap", "5"], "--latency-cap needs --device"),
        (["--device", "pixel3", "--latency-cap", "0.001"],
         "--latency-cap 0.001: no cell of {data} runs within 0.001 ms on pixel3; the cap must be a number of at "
         "least 0.003277 ms"),
        (["--device", "pixel3", "--latency-cap", "nan"], "--latency-cap nan: no cell of"),
        (["--strategies", ","], "--strategies ',': names no strategy"),
        (["--strategies", "=random"], "'=random' has an empty label"),
        (["--dataset", ","], "--dataset ',': names no data set"),
        (["--dataset", "cifar10,cifar10"], "--dataset cifar10,cifar10: names a data set twice"),
        (["--workers", "0"], "--workers 0: must be an integer of at least 1"),
        (["--budget", "-3"], "--budget -3: must be an integer of at least 1"),
        (["--seed", "-1"], "--seed -1: the seeds -1..-1 must lie in 0..4294967295"),
        (["--signal-decimals", "9"], "--signal-decimals 9: must be in 0..6"),
        (["--score", "tset"], "--score 'tset': must be one of test, val"),
        (["--score", "val", "--device", "pixel3"], "--score val: applies to the accuracy and cap modes"),
        (["--option", "evolution.population_size=abc", "--strategies", "evolution"],
         "--option evolution.population_size='abc': sampler 'evolution'"),
        (["--trusted"], "--trusted applies to --official only"),
        (["--out", "{file}"], "--out {file}: {file} is a file, not a folder"),
        (["--out", "{file}/sub"], "--out {file}/sub: {file} is a file, not a folder"),
        (["--cache-dir", "{file}/cache"], "--cache-dir {file}/cache: {file} is a file, not a folder"),
        (["--data", "{small}"], "{small} lists 3 cells; the benchmark samples the whole space and needs all 15,625"),
    ],
)
def test_cli_errors_exit_2_with_one_message(args, message, tmp_path, capsys) -> None:
    data = shared_data("nasbench201")
    (tmp_path / "file").write_text("not a folder")
    write_tables(tmp_path / "small")
    paths = {"data": data, "file": tmp_path / "file", "small": tmp_path / "small"}
    args = [a.format(**paths) for a in args]
    code = main(["bench", "nb201", "--data", str(data), "--cache-dir", str(tmp_path / "c"), "--seeds", "1",
                 "--budget", "2", "--workers", "1", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message.format(**paths) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("llmnas: error: ")
    assert not (tmp_path / "o").exists()  # failed before any run: nothing written


def test_cli_missing_data_folder(tmp_path, capsys) -> None:
    assert main(["bench", "nb201", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "data folder not found" in capsys.readouterr().err


def test_strategy_options_read_numbers_as_recipes_do() -> None:
    from llmnas.cli.bench import parse_options

    options = parse_options(["thompson.noise=1e-1", "ts-prior3.prior=3", "rl.controller=lstm"])
    assert options == {"thompson": {"noise": 0.1}, "ts-prior3": {"prior": 3}, "rl": {"controller": "lstm"}}
    assert isinstance(options["thompson"]["noise"], float)  # plain YAML 1.1 reads 1e-1 as a string
