"""Image sources decoded once into a cached tensor file; the split; augmentation; bad input."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llmnas.errors import DataError
from llmnas.vision import data as vdata
from llmnas.vision.data import augment, load_images, nb201_split, normalise
from tests.conftest import shared_data
from tests.vision.conftest import CIFAR_TARBALL

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_folder_and_tarball_give_the_same_tensors(tiny_folder: Path, tiny_tarball: Path) -> None:
    a = load_images(tiny_folder)
    b = load_images(tiny_tarball)
    assert a.train_x.shape == (60, 3, 32, 32) and a.test_x.shape == (20, 3, 32, 32)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert a.classes[:2] == ["airplane", "automobile"] and a.num_classes == 10
    assert torch.bincount(a.train_y).tolist() == [6] * 10
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    # the pixels are the JPEG's own
    first = sorted((tiny_folder / "train" / "airplane").iterdir())[0]
    assert torch.equal(a.train_x[0], torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1))
    assert all(0.0 < m < 1.0 for m in a.mean) and all(0.0 < s < 0.5 for s in a.std)


def test_decoded_once_then_read_from_the_cache(tiny_folder: Path, image_cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_images(tiny_folder)
    files = list((image_cache / "images").glob("*.pt"))
    assert len(files) == 1

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(vdata, "_decode_image_folder", no_decode)
    again = load_images(tiny_folder)
    assert torch.equal(first.train_x, again.train_x) and again.mean == first.mean
    files[0].write_bytes(b"damaged")  # a damaged entry is decoded again, not an error
    monkeypatch.undo()
    monkeypatch.setenv("LLMNAS_CACHE", str(image_cache))
    assert torch.equal(load_images(tiny_folder).train_x, first.train_x)


def test_split_halves_are_disjoint_and_stratified(tiny_folder: Path) -> None:
    data = load_images(tiny_folder)
    tr, va = nb201_split(data, seed=0)
    assert len(tr) == len(va) == 30 and not set(tr.tolist()) & set(va.tolist())
    assert torch.bincount(data.train_y[tr]).tolist() == [3] * 10
    assert torch.equal(nb201_split(data, 0)[0], tr) and not torch.equal(nb201_split(data, 1)[0], tr)


def test_augment_crops_with_zero_padding_and_flips() -> None:
    from llmnas.vision.data import ImageData

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4) + 1
    data = ImageData(x, torch.zeros(2, dtype=torch.long), x, torch.zeros(2, dtype=torch.long), ["a"],
                     mean=(0.0,), std=(1 / 255,), name="t")
    seen = set()
    for seed in range(40):
        out = augment(x, torch.Generator().manual_seed(seed), data, padding=1)  # values back in 0..255
        assert out.shape == x.shape
        for b in range(2):
            img = out[b, 0].round().to(torch.uint8)
            padded = torch.nn.functional.pad(x[b, 0], (1, 1, 1, 1))
            windows = [padded[i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
            matches = [k for k, w in enumerate(windows) if torch.equal(img, w)]
            flipped = [k for k, w in enumerate(windows) if torch.equal(img, w.flip(1))]
            assert matches or flipped
            seen.add((tuple(matches), tuple(flipped)))
    assert len(seen) > 6  # many offsets, both orientations
    torch.testing.assert_close(normalise(x, data), x.float())


def test_real_cifar10_tarball_decodes_to_the_official_sizes() -> None:
    """The one real decode (about 10 s the first time), kept in the user's cache for every later run."""
    os.environ.pop("LLMNAS_CACHE", None)  # the shared cache: decoded once per machine
    data = load_images(shared_data(CIFAR_TARBALL))
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    # the test-set channel means that ../shared/data/PROVENANCE.md states for this JPEG copy
    means = (data.test_x.double().mean((0, 2, 3)) / 255).tolist()
    assert means == pytest.approx([0.494, 0.485, 0.450], abs=1e-3)
    tr, va = nb201_split(data)
    assert len(tr) == len(va) == 25000 and torch.bincount(data.train_y[va]).tolist() == [2500] * 10


def test_fashion_mnist_idx_files() -> None:
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        reason = f"{FASHION}: Debian package dataset-fashion-mnist not installed (.ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    data = load_images(FASHION)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.classes[0] == "T-shirt/top" and torch.bincount(data.test_y).tolist() == [1000] * 10
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-3)


# ---------------------------------------------------------------------------------------- bad input
def _bad(source: Path, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_images(source)


def test_missing_source(tmp_path: Path) -> None:
    _bad(tmp_path / "nowhere", "does not exist")
    (tmp_path / "notes.txt").write_text("x")
    _bad(tmp_path / "notes.txt", "not a tarball")


def test_folder_without_splits_or_images(tmp_path: Path) -> None:
    (tmp_path / "d" / "train").mkdir(parents=True)
    _bad(tmp_path / "d", "no test/ folder")
    (tmp_path / "d" / "test").mkdir()
    _bad(tmp_path / "d", r"no images under train/<class>/")


def test_corrupt_image_names_the_file(tiny_folder: Path, tmp_path: Path, image_cache: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    victim = sorted((copy / "test" / "cat").iterdir())[0]
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    _bad(copy, f"{victim.name}: corrupt or unreadable image")
    assert not list((image_cache / "images").glob("*.pt")) if (image_cache / "images").exists() else True


def test_images_of_mixed_sizes(tiny_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    victim = sorted((copy / "train" / "dog").iterdir())[0]
    Image.new("RGB", (40, 30)).save(victim, format="JPEG")
    _bad(copy, "size 40x30.*all images must share one size")


def test_tarball_of_the_wrong_layout(tmp_path: Path) -> None:
    out = tmp_path / "flat.tar.gz"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    with tarfile.open(out, "w:gz") as tar:
        info = tarfile.TarInfo("images/cat/0.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    _bad(out, "wrong layout")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(b"this is no tar archive" * 40))
    _bad(broken, "not a readable tarball")


def test_corrupt_or_incomplete_idx_folder(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 8)
    _bad(tmp_path, "IDX folder lacks")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"junk")
    _bad(tmp_path, "corrupt IDX file")
