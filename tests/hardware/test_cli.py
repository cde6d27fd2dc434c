"""``llmnas hw profile | predict | measure`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

from llmnas.cli import main
from llmnas.hardware import LatencyPredictor
from llmnas.space import load_space


def test_profile_prints_the_held_out_error_and_predict_uses_the_file(tmp_path: Path, micro_space_file: Path,
                                                                     capsys) -> None:
    out = tmp_path / "hw"
    args = ["hw", "profile", str(micro_space_file), "--n", "24", "--out", str(out), "--repeats", "2",
            "--train-repeats", "0", "--prompt-len", "8", "--new-tokens", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "tested on 12 held out" in printed and "| prefill_ms |" in printed and "| decode_tokens_per_s |" in printed
    assert "train_step_ms" not in printed  # not measured (--train-repeats 0), so not predicted
    arch = load_space(micro_space_file).sample(5)
    arch.save(tmp_path / "arch.json")
    assert main(["hw", "predict", str(tmp_path / "arch.json"), "--predictor", str(out / "predictor.json"),
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    predicted = LatencyPredictor.read(out / "predictor.json").predict(arch)
    assert shown["arch_id"] == arch.id and shown["predicted"] == predicted
    assert shown["settings"]["prompt_len"] == 8 and shown["holdout_error"]["prefill_ms"]["predictor"]["n"] == 12
    assert main(["hw", "predict", str(tmp_path / "arch.json"), "--predictor", str(out)]) == 0  # the folder works too
    assert "held-out:" in capsys.readouterr().out


def test_measure_prints_the_figures_with_their_settings(tmp_path: Path, micro_space_file: Path, capsys) -> None:
    load_space(micro_space_file).sample(2).save(tmp_path / "arch.json")
    assert main(["hw", "measure", str(tmp_path / "arch.json"), "--repeats", "3", "--train-repeats", "1",
                 "--prompt-len", "8", "--new-tokens", "4", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["settings"]["repeats"] == 3 and row["device"]["threads"] == 1
    assert row["prefill_ms"]["n"] == 3 and row["train_step_ms"]["n"] == 1 and row["peak_memory_mb"] > 0
