from __future__ import annotations

import bz2
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from llmnas.benchmarks.nb201 import ACC12_FILE, DATASETS, LATENCY_FILE, TEST200_FILE, load_nb201, load_official
from llmnas.errors import DataError
from llmnas.space.nb201 import NB201Cell
from tests.conftest import shared_data

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


# ---------------------------------------------------------------------- the shared CSV tables
def test_shared_tables_hold_the_published_facts(tmp_path) -> None:
    folder = shared_data("nasbench201")
    table = load_nb201(folder, cache_dir=tmp_path)
    assert len(table) == 15_625 and len(table.devices) == 27 and "pixel3" in table.devices
    best = {ds: table.test200[ds].max() for ds in DATASETS}
    assert [round(best[d], 2) for d in DATASETS] == [94.37, 73.51, 47.31]
    assert set(np.flatnonzero(np.isclose(table.test200["cifar10"], best["cifar10"]))) == {6111, 13714}
    assert table.index_of(BEST) == 13714
    assert int((np.round(table.test200["cifar10"], 1) == 10.0).sum()) == 341
    assert table.val12["cifar10"][13714] == pytest.approx(84.892, abs=1e-3)
    cached = load_nb201(folder, cache_dir=tmp_path)  # from the .npz cache
    assert list(tmp_path.glob("nb201-*.npz")) and cached.arch_strs == table.arch_strs
    for name in ("val12", "test12", "test200", "latency"):
        for key, arr in getattr(table, name).items():
            np.testing.assert_array_equal(getattr(cached, name)[key], arr)


ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    BEST,
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
]


def write_tables(folder: Path, archs: list[str] = ARCHS, latency: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    acc = ["arch,cellstr,cifar10-test,cifar10-val,cifar100-test,cifar100-val,imagenet-test,imagenet-val"]
    acc += [f"{i},{a},{80 + i},{70 + i},{50 + i},{40 + i},{30 + i},{20 + i}" for i, a in enumerate(archs)]
    (folder / ACC12_FILE).write_text("\n".join(acc) + "\n")
    test = ["CIFAR10TestAccuracy200Epochs,CIFAR100TestAccuracy200Epochs,ImageNetTestAccuracy200Epochs,"
            "ArchitectureString,UniqueString"]
    test += [f"{90 + i},{60 + i},{40 + i},{a},{NB201Cell.from_str(a).unique_str()}" for i, a in enumerate(archs)]
    (folder / TEST200_FILE).write_text("\n".join(test) + "\n")
    if latency:
        lat = ["index,arch_str,pixel3,fpga"] + [f"{i},{a},{1.5 * i},{0.1}" for i, a in enumerate(archs)]
        (folder / LATENCY_FILE).write_bytes(gzip.compress(("\n".join(lat) + "\n").encode()))


def test_small_tables_parse(tmp_path) -> None:
    write_tables(tmp_path)
    table = load_nb201(tmp_path)
    assert table.arch_strs == tuple(ARCHS)
    assert table.val12["cifar100"].tolist() == [40, 41, 42] and table.test200["imagenet16-120"][2] == 42
    assert table.latency_of("pixel3").tolist() == [0.0, 1.5, 3.0]
    with pytest.raises(DataError, match=r"no latency for device 'raspi4' \(available: pixel3, fpga\)"):
        table.latency_of("raspi4")
    write_tables(tmp_path / "nolat", latency=False)
    assert load_nb201(tmp_path / "nolat").devices == ()


def test_missing_and_malformed_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        load_nb201(tmp_path / "nowhere")
    write_tables(tmp_path)
    (tmp_path / TEST200_FILE).unlink()
    with pytest.raises(DataError, match=f"file missing: .*{TEST200_FILE}"):
        load_nb201(tmp_path)

    write_tables(tmp_path)
    text = (tmp_path / ACC12_FILE).read_text().replace("cifar100-val", "c100val")
    (tmp_path / ACC12_FILE).write_text(text)
    with pytest.raises(DataError, match=f"{ACC12_FILE}: missing column.*cifar100-val"):
        load_nb201(tmp_path)

    write_tables(tmp_path)
    text = (tmp_path / TEST200_FILE).read_text().replace(",61,", ",sixty-one,")
    (tmp_path / TEST200_FILE).write_text(text)
    with pytest.raises(DataError, match=r"row 3, column 'CIFAR100TestAccuracy200Epochs': 'sixty-one' is not a number"):
        load_nb201(tmp_path)

    write_tables(tmp_path)
    write_tables(tmp_path / "other", archs=[ARCHS[1], ARCHS[0], ARCHS[2]])
    (tmp_path / TEST200_FILE).write_text((tmp_path / "other" / TEST200_FILE).read_text())
    with pytest.raises(DataError, match="out of order"):
        load_nb201(tmp_path)

    write_tables(tmp_path)
    (tmp_path / ACC12_FILE).write_text((tmp_path / ACC12_FILE).read_text().replace("|none~0|+", "|nope~0|+"))
    with pytest.raises(DataError, match="unknown operation 'nope'"):
        load_nb201(tmp_path)

    write_tables(tmp_path)
    (tmp_path / LATENCY_FILE).write_bytes(b"not gzip")
    with pytest.raises(DataError, match=f"cannot read .*{LATENCY_FILE}"):
        load_nb201(tmp_path)


# ---------------------------------------------------------------------- the official benchmark layout
def results_count(epochs: int, evals: dict[str, float], seed: int) -> dict:
    """A ResultsCount state dict as the NAS-Bench-201 / NATS-Bench APIs write it."""
    return {
        "name": "x", "net_state_dict": None, "train_acc1es": {e: 50.0 for e in range(epochs)}, "train_acc5es": None,
        "train_losses": {e: 1.0 for e in range(epochs)}, "train_times": {e: 1.0 for e in range(epochs)},
        "arch_config": {"channel": 16, "num_cells": 5}, "params": 0.5, "flop": 80.0, "seed": seed,
        "epochs": epochs, "latency": [0.01],
        "eval_names": sorted({k.split("@")[0] for k in evals}),
        "eval_acc1es": {f"{k}@{epochs - 1}": v for k, v in evals.items()} | {f"{k}@0": 1.0 for k in evals},
        "eval_times": {}, "eval_losses": {},
    }


def arch_results(index: int, arch: str, epochs: int, base: float) -> dict:
    """An ArchResults state dict: two seeds on cifar10-valid, one on the others."""
    runs = {
        ("cifar10-valid", 777): {"x-valid": base + 1, "ori-test": base + 2},
        ("cifar10-valid", 888): {"x-valid": base + 3, "ori-test": base + 4},
        ("cifar10", 777): {"ori-test": base + 5},
        ("cifar100", 777): {"x-valid": base + 6, "x-test": base + 7, "ori-test": base + 8},
        ("ImageNet16-120", 777): {"x-valid": base + 9, "x-test": base + 10, "ori-test": base + 11},
    }
    seeds: dict[str, list[int]] = {}
    for ds, seed in runs:
        seeds.setdefault(ds, []).append(seed)
    return {"arch_index": index, "arch_str": arch, "clear_net_done": True, "dataset_seed": seeds,
            "all_results": {key: results_count(epochs, ev, key[1]) for key, ev in runs.items()}}


def official_dict(hp12: str, hp200: str) -> dict:
    infos = {i: {hp12: arch_results(i, a, 12, 10.0 * i), hp200: arch_results(i, a, 200, 10.0 * i + 0.5)}
             for i, a in enumerate(ARCHS)}
    return {"meta_archs": list(ARCHS), "arch2infos": infos, "evaluated_indexes": list(range(len(ARCHS)))}


def check_official_table(table) -> None:
    assert table.arch_strs == tuple(ARCHS)
    np.testing.assert_allclose(table.val12["cifar10"], [2.0, 12.0, 22.0])  # mean of the two seeds
    np.testing.assert_allclose(table.test12["cifar10"], [3.0, 13.0, 23.0])
    np.testing.assert_allclose(table.val12["cifar100"], [6.0, 16.0, 26.0])
    np.testing.assert_allclose(table.test200["cifar10"], [5.5, 15.5, 25.5])  # cifar10 (train+valid), ori-test
    np.testing.assert_allclose(table.test200["cifar100"], [7.5, 17.5, 27.5])  # x-test, not ori-test
    np.testing.assert_allclose(table.test200["imagenet16-120"], [10.5, 20.5, 30.5])
    assert table.index_of(BEST) == 1


def test_official_nasbench201_pth(tmp_path) -> None:
    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch.save(official_dict("less", "full"), path)
    check_official_table(load_official(path))


def test_official_nats_tss_pickle_and_fast_mode_folder(tmp_path) -> None:
    data = official_dict("12", "200")
    path = tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2"
    with bz2.open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    check_official_table(load_official(path))

    folder = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    folder.mkdir()
    with bz2.open(folder / "meta.pickle.pbz2", "wb") as f:
        pickle.dump({"meta_archs": data["meta_archs"]}, f)
    for i, info in data["arch2infos"].items():
        with bz2.open(folder / f"{i:06d}.pickle.pbz2", "wb") as f:
            pickle.dump(info, f)
    check_official_table(load_official(folder))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.pth", b"hello\n", r"cannot read .*garbage.pth: \w+Error: .*expected an official NAS-Bench-201"),
        ("empty.pth", b"", r"cannot read .*empty.pth: EOFError \(truncated or empty file\?\)"),
        ("notes.pickle", b"# not a pickle\n", r"cannot read .*notes.pickle: UnpicklingError: invalid load key"),
        ("cut.pickle", pickle.dumps({"meta_archs": ARCHS})[:-5], r"cannot read .*cut.pickle: \w+"),
    ],
)
def test_damaged_or_foreign_official_files_are_one_clear_error(tmp_path, name, content, message) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_official(tmp_path / name)
    assert "trusted" not in str(info.value)  # not a safety question: --trusted would not help


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_official_reader_refuses_unsafe_pickles_and_odd_layouts(tmp_path) -> None:
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"meta_archs": ARCHS, "arch2infos": {0: Evil()}}))
    with pytest.raises(DataError, match="cannot be unpickled safely.*trusted"):
        load_official(path)
    path.write_bytes(pickle.dumps({"something": 1}))
    with pytest.raises(DataError, match="not a NAS-Bench-201/NATS-Bench file"):
        load_official(path)
    path.write_bytes(pickle.dumps({"meta_archs": ARCHS, "arch2infos": {0: {"12": {"x": 1}}}}))
    with pytest.raises(DataError, match="architecture 0 are not an ArchResults"):
        load_official(path)
    with pytest.raises(DataError, match="not found"):
        load_official(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing meta.pickle.pbz2"):
        load_official(tmp_path / "empty")
