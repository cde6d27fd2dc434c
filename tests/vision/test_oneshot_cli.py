"""``llmnas bench nb201-oneshot`` end to end at tiny size on real CIFAR-10, and its bad-input errors."""

from __future__ import annotations

import json

import pytest

from llmnas.benchmarks import load_nb201
from llmnas.cli import main
from tests.conftest import shared_data

TINY = ["--set", "C=2", "--set", "train_images=64", "--set", "valid_images=64", "--set", "batch_size=32",
        "--set", "eval_images=32", "--set", "bn_batches=1", "--set", "search_trials=3", "--set", "population_size=2",
        "--set", "sample_size=1", "--set", "fidelity_cells=6", "--set", "final_samples=2",
        "--set", "epochs={darts: 1, gdas: 1, enas: 1, spos: 1}"]


@pytest.fixture(scope="module")
def paths():
    return shared_data("images/cifar10_jpg.tar.gz"), shared_data("nasbench201")


def run(paths, *args: str) -> int:
    images, table = paths
    return main(["bench", "nb201-oneshot", "--images", str(images), "--data", str(table), *args])


def test_cli_writes_table_json_and_png(paths, tmp_path, capsys):
    out = tmp_path / "oneshot"
    assert run(paths, "--strategies", "darts,gdas,enas,spos", "--seeds", "1", "--seed", "5", "--out", str(out),
               *TINY) == 0
    md = (out / "results.md").read_text()
    for row in ("DARTS (first order)** (this run)", "GDAS** (this run)", "ENAS** (this run)",
                "SPOS + evolution** (this run)", "DARTS-V1 (first order) (published) | | 54.30 ± 0.00",
                "GDAS (published) | | 93.61 ± 0.09 | 70.70 ± 0.30 | 41.71 ± 0.98", "DrNAS", "Kendall τ",
                "Architecture weights at the end of the search"):
        assert row in md, row
    data = json.loads((out / "runs.json").read_text())
    table = load_nb201(paths[1])
    assert [(r["strategy"], r["seed"]) for r in data["runs"]] == [(s, 5) for s in ("darts", "gdas", "enas", "spos")]
    for r in data["runs"]:
        i = table.index_of(r["cell"])
        assert r["table"]["cifar100"] == pytest.approx(float(table.test200["cifar100"][i]))
        assert f"`{r['cell']}`" in md
    assert data["fidelity"]["runs"][0]["cells"] == 6
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --resume keeps the finished runs: nothing is searched again
    before = {r["strategy"]: r["wall_seconds"] for r in data["runs"]}
    assert run(paths, "--strategies", "darts,spos", "--seeds", "1", "--seed", "5", "--out", str(out), "--resume",
               *TINY) == 0
    again = json.loads((out / "runs.json").read_text())["runs"]
    assert {r["strategy"]: r["wall_seconds"] for r in again} == before  # the other strategies' runs are kept
    assert "ENAS** (this run)" not in (out / "results.md").read_text()
    assert "resuming: 4 finished run(s)" in capsys.readouterr().out
    # --report rewrites the outputs from the finished runs and searches nothing
    (out / "results.md").unlink()
    assert run(paths, "--strategies", "gdas", "--seeds", "1", "--seed", "5", "--out", str(out), "--report", *TINY) == 0
    assert "GDAS** (this run)" in (out / "results.md").read_text()
    assert {r["strategy"]: r["wall_seconds"] for r in json.loads((out / "runs.json").read_text())["runs"]} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategies", "darts,bogus"],
         "unknown one-shot strategy 'bogus' (allowed: darts, gdas, enas, spos, drnas, darts_minus)"),
        (["--strategies", ","], "names no strategy"),
        (["--seeds", "0"], "--seeds 0: need at least 1"),
        (["--seeds", "-2"], "--seeds -2: need at least 1"),
        (["--seed", "-1"], "--seed -1"),
        (["--set", "lr"], "--set 'lr' must read KEY=VALUE"),
        (["--set", "wings=2"], "unknown one-shot setting 'wings'"),
        (["--set", "epochs={darts: 0}"], "epochs: darts=0"),
        (["--set", "drnas_reg=l1"], "drnas_reg='l1' is not a DrNAS regulariser (allowed: l2, kl)"),
        (["--protocol", "tpu"], "--protocol 'tpu' is not a protocol (allowed: cpu, gpu)"),
        (["--images", "/nonexistent/cifar.tar.gz"], "/nonexistent/cifar.tar.gz does not exist"),
        (["--report"], "runs.json does not exist (run the benchmark first)"),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_written(paths, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    images, table = paths
    full = ["bench", "nb201-oneshot", "--images", str(images), "--data", str(table), "--out", str(out), *args]
    code = main(full)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and err.count("error") == 1 and "Traceback" not in err
    assert not out.exists()


def test_shipped_gpu_config_is_nas_bench_201s_protocol():
    from pathlib import Path

    from llmnas.vision.oneshot.cli import build_config

    shipped = build_config("cpu", Path(__file__).resolve().parents[2] / "eval" / "nb201_oneshot" / "gpu.yaml", [])
    assert shipped == build_config("gpu", None, [])
    assert (shipped.C, shipped.N, shipped.epochs_of("darts"), shipped.train_images) == (16, 5, 50, 0)
