"""The latency predictor: a look-up table per block shape, a file tied to its device and space, its own error."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from llmnas.hardware import HardwareError, LatencyPredictor, load_predictor
from llmnas.hardware.lut import attn_key, base_key, block_keys, ffn_key, lut_sum, parts_of, space_parts
from llmnas.hardware.objectives import best_case
from llmnas.space import load_space
from llmnas.space.arch import BlockSpec
from llmnas.space.feasibility import groups


def test_profile_writes_predictor_measurements_and_held_out_error(micro_predictor: LatencyPredictor) -> None:
    folder = Path(micro_predictor.path).parent
    rows = [json.loads(line) for line in (folder / "measurements.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and sum(r["split"] == "holdout" for r in rows) == 12
    assert all(r["settings"]["repeats"] == 3 and r["device"]["kind"] == "cpu" for r in rows)
    report = micro_predictor.report
    assert report["n_fit"] == 12 and report["n_holdout"] == 12
    for target in ("prefill_ms", "decode_tokens_per_s", "peak_memory_mb"):
        err = report["holdout"][target]["predictor"]
        assert err["n"] == 12 and 0 <= err["within_10pct"] <= 1 and -1 <= err["spearman"] <= 1
    assert "within ±10 %" in (folder / "report.md").read_text()


def test_predictor_file_round_trip(micro_predictor: LatencyPredictor, micro_space_file: Path) -> None:
    space = load_space(micro_space_file)
    loaded = load_predictor(micro_predictor.path, space=space)
    for seed in range(5):
        arch = space.sample(seed)
        assert loaded.predict(arch) == micro_predictor.predict(arch)
    assert loaded.settings == micro_predictor.settings and loaded.table == micro_predictor.table


def test_one_table_entry_per_block_shape(micro_predictor: LatencyPredictor, micro_space_file: Path) -> None:
    """Layers with equal shapes, in one architecture or in two, share an entry: the table is keyed by shape."""
    space = load_space(micro_space_file)
    arch = space.sample(1)
    twice = arch.replace(blocks=(arch.blocks[0],) * 2)
    keys = block_keys(twice)
    assert keys[1] == keys[3] and keys[2] == keys[4]  # the two layers' attention and FFN entries
    parts = parts_of([arch, twice])
    assert len(parts) == len({*block_keys(arch), *keys})
    table = micro_predictor.table
    one_layer = lut_sum(arch.replace(blocks=arch.blocks[:1]), table, "prefill")
    per_layer = table[attn_key(arch, arch.blocks[0])]["prefill"] + table[ffn_key(arch, arch.blocks[0])]["prefill"]
    assert lut_sum(twice, table, "prefill") == pytest.approx(one_layer + per_layer)
    assert table[base_key(arch)]["decode"] > 0
    # the profile measured every part of the space exactly once
    assert set(table) == set(space_parts(space))


def test_predictor_refused_on_another_device(micro_predictor: LatencyPredictor, tmp_path: Path) -> None:
    data = json.loads(Path(micro_predictor.path).read_text())
    data["device"]["cpu_model"] = "Some Other CPU (family/model/stepping 1/2/3)"
    other = tmp_path / "predictor.json"
    other.write_text(json.dumps(data))
    with pytest.raises(HardwareError, match="fitted on another device .*cpu_model"):
        load_predictor(other)
    data["device"] = json.loads(Path(micro_predictor.path).read_text())["device"] | {"threads": 2}
    other.write_text(json.dumps(data))
    with pytest.raises(HardwareError, match="threads: 2 != 1"):
        load_predictor(other)


def test_predictor_refused_for_another_space(micro_predictor: LatencyPredictor) -> None:
    with pytest.raises(HardwareError, match="fitted for another space .*name 'micro' != 'tiny'"):
        load_predictor(micro_predictor.path, space=load_space("tiny"))
    with pytest.raises(HardwareError, match="no look-up entry"):
        micro_predictor.predict(load_space("tiny").sample(0))


def test_best_case_is_the_minimum_over_the_space(micro_predictor: LatencyPredictor, micro_space_file: Path) -> None:
    """Every architecture of the micro space enumerated: the additive shortcut finds the same optimum (a bound
    below it for the prefill, whose mask features are not sums over layers)."""
    space = load_space(micro_space_file)
    best = best_case(micro_predictor, space)
    found: dict[str, float] = {}
    for g in groups(space):
        layers = [BlockSpec(a, f) for a in g.attn for f in g.ffn]
        for n in g.depths:
            for blocks in itertools.product(layers, repeat=n):
                values = micro_predictor.predict(g.arch(list(blocks)))
                for k, v in values.items():
                    found[k] = max(found.get(k, v), v) if k == "decode_tokens_per_s" else min(found.get(k, v), v)
    for key in ("decode_ms_per_step", "peak_memory_mb", "decode_tokens_per_s", "train_step_ms"):
        assert best[key] == pytest.approx(found[key], rel=1e-9)
    assert best["prefill_ms"] <= found["prefill_ms"] + 1e-12
