"""measure(): figures with their settings and device, memory from torch's allocation records, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmnas.hardware import HardwareError, Settings, describe_device, measure, measure_many
from llmnas.space.arch import Architecture, AttentionSpec, BlockSpec, DenseFFN
from tests.hardware.conftest import QUICK


def decoder(d_model: int, layers: int, max_seq_len: int = 64) -> Architecture:
    block = BlockSpec(AttentionSpec(4, 2, d_model // 4), DenseFFN(4 * d_model, "swiglu"))
    return Architecture(vocab_size=257, d_model=d_model, max_seq_len=max_seq_len, blocks=(block,) * layers)


def test_measurement_records_settings_device_and_consistent_figures() -> None:
    m = measure(decoder(32, 1), "cpu", QUICK)
    assert m.settings == QUICK
    assert m.device["kind"] == "cpu" and m.device["threads"] == 1 and m.device["torch"] in torch.__version__
    assert m.device["cpu_model"] and m.device["cpu_count"] >= 1
    assert m.extra["clock"] == "thread_cpu"  # CPU, one thread
    v = m.values()
    assert all(v[k] > 0 for k in ("prefill_ms", "decode_tokens_per_s", "train_step_ms", "peak_memory_mb"))
    # tokens/s and ms per step come from the same timed runs (odd repeats: the median is one of them)
    assert v["decode_tokens_per_s"] * v["decode_ms_per_step"] == pytest.approx(1e3 * QUICK.batch_size)
    assert m.prefill_ms.n == QUICK.repeats and m.train_step_ms.n == QUICK.train_repeats
    assert m.prefill_ms.p25 <= m.prefill_ms.median <= m.prefill_ms.p75
    row = m.to_dict()
    assert row["settings"]["prompt_len"] == QUICK.prompt_len and row["device"] == m.device


def test_peak_memory_counts_weights_cache_and_training_state() -> None:
    """Tensor memory from torch's allocation records: at least the weights and the KV cache while serving; a
    training step adds gradients and AdamW's two moments; the same run gives the same figure."""
    arch = decoder(64, 2)
    settings = dataclasses.replace(QUICK, repeats=1)
    a, b = measure_many([arch, arch], "cpu", settings)
    weights = arch.param_counts().total * 4 / 2**20
    kv = arch.kv_cache_bytes_per_token(4) * (QUICK.prompt_len + QUICK.new_tokens) / 2**20
    assert a.peak_memory_mb >= weights + kv
    assert a.train_peak_memory_mb >= 4 * weights  # weights, gradients, two moments
    assert a.peak_memory_mb == b.peak_memory_mb and a.train_peak_memory_mb == b.train_peak_memory_mb
    bigger = measure(decoder(128, 4), "cpu", settings)
    assert bigger.peak_memory_mb > 4 * a.peak_memory_mb


def test_isolated_measurement_runs_each_chunk_in_a_fresh_process() -> None:
    """The default (``isolate``): each chunk is measured in a spawned process; the figures come back whole (peak
    memory, exact, equals the in-process figure), in order, and the LUT's parts are measured the same way."""
    import os

    from llmnas.hardware.lut import measure_parts, parts_of
    from llmnas.hardware.measure import in_fresh_process

    assert Settings().isolate
    assert in_fresh_process(os.getpid) != os.getpid()
    archs = [decoder(32, 1), decoder(64, 2), decoder(32, 2)]
    settings = dataclasses.replace(QUICK, isolate=True, train_repeats=0)
    isolated = measure_many(archs, "cpu", settings, chunk=2)
    here = measure_many(archs, "cpu", dataclasses.replace(settings, isolate=False), chunk=2)
    assert [m.arch_id for m in isolated] == [a.id for a in archs]
    assert [m.peak_memory_mb for m in isolated] == [m.peak_memory_mb for m in here]
    assert all(m.settings.isolate and m.prefill_ms.n == QUICK.repeats for m in isolated)
    table = measure_parts(parts_of(archs[:1]), torch.device("cpu"), settings)
    assert table and all(v["prefill"] > 0 and v["decode"] > 0 for v in table.values())


def test_an_error_in_the_measuring_process_is_raised_here() -> None:
    from llmnas.hardware.measure import in_fresh_process

    with pytest.raises(HardwareError, match="unknown device"):
        in_fresh_process(describe_device, "tpu")


def test_a_measuring_process_that_dies_is_one_clear_error() -> None:
    import os

    from llmnas.hardware.measure import in_fresh_process

    with pytest.raises(HardwareError, match="measuring process died.*__main__"):
        in_fresh_process(os._exit, 3)


def test_a_larger_model_takes_longer_and_serves_fewer_tokens() -> None:
    settings = dataclasses.replace(QUICK, repeats=5, train_repeats=0, memory=False)
    small, large = measure_many([decoder(32, 1), decoder(256, 6)], "cpu", settings)
    assert large.prefill_ms.median > 3 * small.prefill_ms.median  # a ratio: both timed on the same machine
    assert large.decode_tokens_per_s.median < small.decode_tokens_per_s.median / 2
    assert small.train_step_ms is None


def test_bad_devices_and_settings_are_clear_errors() -> None:
    arch = decoder(32, 1, max_seq_len=16)
    with pytest.raises(HardwareError, match="device 'tpu': unknown device"):
        measure(arch, "tpu", QUICK)
    if not torch.cuda.is_available():
        with pytest.raises(HardwareError, match="CUDA is not available"):
            measure(arch, "cuda", QUICK)
    with pytest.raises(HardwareError, match=r"prompt_len=16 \+ new_tokens=4 = 20 exceed .* max_seq_len=16"):
        measure(arch, "cpu", QUICK, prompt_len=16)
    with pytest.raises(HardwareError, match="repeats=0: must be a positive integer"):
        Settings(repeats=0)
    with pytest.raises(HardwareError, match="clock=thread_cpu needs threads=1"):
        Settings(clock="thread_cpu", threads=2)
    with pytest.raises(HardwareError, match="dtype 'float64'"):
        Settings(dtype="float64")


def test_device_description_identifies_the_machine() -> None:
    d = describe_device("cpu", threads=1)
    assert d == describe_device("cpu", threads=1)
    assert d != describe_device("cpu", threads=2)
