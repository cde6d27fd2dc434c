"""Fixtures for the vision tests: a handful of real CIFAR-10 images as an ImageFolder, a tarball of it."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.conftest import shared_data

PER_CLASS = {"train": 6, "test": 2}
CIFAR_TARBALL = "images/cifar10_jpg.tar.gz"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/<class>/`` (6 images per class) and ``test/<class>/`` (2) copied from the real CIFAR-10 tarball."""
    source = shared_data(CIFAR_TARBALL)
    root = tmp_path_factory.mktemp("tiny") / "cifar_tiny"
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(source) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in PER_CLASS:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) >= PER_CLASS[parts[0]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            target = root / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            blob = tar.extractfile(member)
            assert blob is not None
            target.write_bytes(blob.read())
    return root


@pytest.fixture(scope="session")
def tiny_tarball(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny folder as a tarball under one top folder (``cifar_tiny/train/...``)."""
    out = tmp_path_factory.mktemp("tar") / "cifar_tiny.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tiny_folder, arcname="cifar_tiny")
    return out


@pytest.fixture(scope="session")
def cifar():
    """The whole real CIFAR-10 (decoded once into the user's cache, then read from it)."""
    from llmnas.vision.data import load_images

    return load_images(shared_data(CIFAR_TARBALL))


@pytest.fixture(scope="session")
def oneshot_batches(cifar):
    """Two training and two validation batches of 32 real CIFAR-10 images for the one-shot strategies."""
    import torch

    from llmnas.vision.oneshot.config import OneShotConfig
    from llmnas.vision.oneshot.search import SearchData

    halves = SearchData.build(cifar, OneShotConfig(train_images=256, valid_images=256, batch_size=32))
    gen = torch.Generator().manual_seed(0)
    train = halves.batches("train", gen)
    valid = halves.batches("valid", gen)
    return [next(train) for _ in range(2)], [next(valid) for _ in range(2)]


@pytest.fixture(autouse=True)
def image_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test decodes into its own cache (the real CIFAR test names the shared one itself)."""
    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the searches use: two threads on a loaded 2-core machine are several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
