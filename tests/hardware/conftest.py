"""Shared by the hardware tests: the micro space, quick measurement settings, one predictor profiled per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmnas.hardware import LatencyPredictor, Settings, profile_space
from llmnas.space import load_space
from tests.conftest import MICRO_SPACE

#: Few repeats and short sequences, in the tests' own process: the tests check behaviour, not precision (a
#: fresh measuring process, the default, is tested on its own in test_measure.py).
QUICK = Settings(batch_size=1, prompt_len=8, new_tokens=4, train_batch_size=2, train_seq_len=16, repeats=3,
                 train_repeats=1, warmup=1, isolate=False)


@pytest.fixture(scope="session")
def micro_space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(MICRO_SPACE)
    return path


@pytest.fixture(scope="session")
def micro_predictor(micro_space_file: Path, tmp_path_factory: pytest.TempPathFactory) -> LatencyPredictor:
    """``llmnas hw profile`` of the micro space (24 architectures, half held out), once per session."""
    out = tmp_path_factory.mktemp("profile")
    return profile_space(load_space(micro_space_file), 24, out, settings=QUICK, seed=0, log=lambda _: None)
