"""Bad hardware input, one row each (the pattern of tests/test_bad_input.py): exit code 2, one ``llmnas: error:``
line naming the key and value, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmnas.cli import main
from llmnas.hardware import LatencyPredictor
from tests.test_bad_input import ARCH, BASE, Row

QUICK_SETTINGS = "hardware.settings={prompt_len: 8, new_tokens: 4, repeats: 1, train_repeats: 0, warmup: 0}"


def other_device(predictor: LatencyPredictor) -> str:
    data = json.loads(Path(predictor.path).read_text())
    data["device"]["cpu_model"] = "Another CPU (family/model/stepping 1/2/3)"
    return json.dumps(data)


def same_device(predictor: LatencyPredictor) -> str:
    return Path(predictor.path).read_text()


PREDICTED = ["--set", "hardware.mode=predicted", "--set", "hardware.predictor={tmp}/p.json"]
ROWS: dict[str, tuple[Row, object]] = {
    "unknown-device-in-recipe": (Row(["search", "{tmp}/r.yaml", "--set", "hardware.device=tpu"],
                                     ["r.yaml: hardware.device 'tpu': unknown device (allowed: cpu, cuda, cuda:N)"],
                                     BASE), None),
    "unknown-mode": (Row(["search", "{tmp}/r.yaml", "--set", "hardware.mode=guessed"],
                         ["r.yaml: hardware.mode='guessed': not allowed (allowed: measured, predicted)"], BASE), None),
    "predictor-missing": (Row(["search", "{tmp}/r.yaml", *PREDICTED],
                              ["r.yaml: hardware.predictor=", "p.json': no such file"], BASE), None),
    "predictor-other-device": (Row(["search", "{tmp}/r.yaml", *PREDICTED],
                                   ["r.yaml: hardware.predictor: predictor file", "another device (cpu_model"],
                                   BASE, keeps_token_cache=True), other_device),
    "predictor-other-space": (Row(["search", "{tmp}/r.yaml", *PREDICTED],
                                  ["r.yaml: hardware.predictor: predictor file", "fitted for another space"],
                                  BASE, keeps_token_cache=True), same_device),
    "cap-no-architecture-meets": (Row(["search", "{tmp}/r.yaml", "--set", "hardware.min_decode_tokens_per_s=1e12",
                                       "--set", QUICK_SETTINGS],
                                      ["r.yaml: hardware.min_decode_tokens_per_s=1e+12: no architecture can meet it"],
                                      BASE, keeps_token_cache=True), None),
    "cap-not-positive": (Row(["search", "{tmp}/r.yaml", "--set", "hardware.max_prefill_ms=0"],
                             ["r.yaml: hardware.max_prefill_ms=0.0: must be a positive number"], BASE), None),
    "predict-other-device": (Row(["hw", "predict", "{tmp}/arch.json", "--predictor", "{tmp}/p.json"],
                                 ["predictor file", "fitted on another device", "llmnas hw profile"],
                                 {"arch.json": ARCH}), other_device),
    "predict-missing-predictor": (Row(["hw", "predict", "{tmp}/arch.json", "--predictor", "{tmp}/nope.json"],
                                      ["predictor file", "nope.json: not found"], {"arch.json": ARCH}), None),
    "predict-unknown-device": (Row(["hw", "predict", "{tmp}/arch.json", "--predictor", "{tmp}/p.json",
                                    "--device", "npu"], ["device 'npu': unknown device"], {"arch.json": ARCH}),
                               same_device),
    "profile-unknown-device": (Row(["hw", "profile", "tiny", "--n", "12", "--out", "{tmp}/out", "--device", "tpu"],
                                   ["device 'tpu': unknown device"]), None),
    "profile-out-is-a-file": (Row(["hw", "profile", "tiny", "--n", "12", "--out", "{tmp}/arch.json"],
                                  ["--out", "arch.json", "is a file"], {"arch.json": ARCH}), None),
    "profile-too-few": (Row(["hw", "profile", "tiny", "--n", "12", "--out", "{tmp}/out"],
                            ["n=12 with holdout=0.5 leaves 6 architectures to fit", "at least 11"]), None),
    "profile-prompt-too-long": (Row(["hw", "profile", "tiny", "--n", "24", "--out", "{tmp}/out", "--prompt-len",
                                     "120"], ["prompt_len=120 + new_tokens=32 = 152 exceed", "max_seq_len=128"]), None),
    "measure-bad-repeats": (Row(["hw", "measure", "{tmp}/arch.json", "--repeats", "0"],
                                ["repeats=0: must be a positive integer"], {"arch.json": ARCH}), None),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_hardware_input(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str], micro_predictor: LatencyPredictor) -> None:
    row, predictor_file = ROWS[name]
    if predictor_file is not None:
        row = Row(row.argv, row.says, {**row.files, "p.json": predictor_file(micro_predictor)},
                  keeps_token_cache=row.keeps_token_cache)
    monkeypatch.chdir(tmp_path)  # anything written to a relative path shows up below
    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    for rel, content in row.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content.replace("{tmp}", str(tmp_path)))
    inputs = files_under(tmp_path)
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in row.argv])
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err and lines and lines[-1].startswith("llmnas: error: "), err
    for fragment in row.says:
        assert fragment.replace("{tmp}", str(tmp_path)) in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    after = files_under(tmp_path)
    if row.keeps_token_cache:  # the tokenised corpus (a cache, not an output of the run) may stay
        after = {f for f in after if f != "cache" and not f.startswith("cache/")}
    assert after == inputs, f"left behind: {sorted(after - inputs)}"


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if "__pycache__" not in p.parts}
