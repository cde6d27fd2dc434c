"""Image data sets as uint8 tensors, decoded once and cached; NAS-Bench-201's split; augmentation in torch.

Sources (:func:`load_images`):

- a tarball (``.tar``, ``.tar.gz``, ``.tgz``) in ImageFolder layout, ``[top/]train/<class>/<file>`` and
  ``[top/]test/<class>/<file>`` (e.g. ``../shared/data/images/cifar10_jpg.tar.gz``);
- an ImageFolder directory with ``train/`` and ``test/`` subfolders;
- a folder of MNIST-style IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-...``), e.g. Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``.

Images are decoded with Pillow (no torchvision), checked to share one size and mode, and saved as one
``torch.save`` file under ``$LLMNAS_CACHE/images`` (or ``~/.cache/llmnas/images``), keyed by the
source's content (a tarball's or IDX file's bytes; a folder's file names, sizes and times). A cache
entry is written to a temporary file and renamed into place, so concurrent loaders never see half a file.

Example:
    >>> data = load_images("../shared/data/images/cifar10_jpg.tar.gz")  # doctest: +SKIP
    >>> data.train_x.shape, data.test_x.shape  # doctest: +SKIP
    (torch.Size([50000, 3, 32, 32]), torch.Size([10000, 3, 32, 32]))
    >>> train_idx, valid_idx = nb201_split(data)  # 25,000 / 25,000  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmnas.data.cache import ENV_VAR
from llmnas.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
SPLITS = ("train", "test")
CACHE_FORMAT = 1
#: Fashion-MNIST's class names, in label order (the IDX files carry only numbers).
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass
class ImageData:
    """A labelled image data set: uint8 ``[N, channels, H, W]`` tensors and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    """Per-channel mean of the training images, in [0, 1]."""
    std: tuple[float, ...]
    name: str

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_cache_dir() -> Path:
    """``$LLMNAS_CACHE/images`` when the variable is set, else ``~/.cache/llmnas/images``."""
    root = os.environ.get(ENV_VAR)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "llmnas") / "images"


def load_images(source: str | Path, cache_dir: Path | None = None) -> ImageData:
    """Load ``source`` (tarball, ImageFolder directory or IDX folder), decoding it only the first time.

    Raises:
        DataError: the source is missing, of an unknown kind or layout, holds an unreadable or corrupt
            image or IDX file, or images of different sizes or modes; the message names the file.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"image source {path} does not exist (give a tarball, an ImageFolder directory with "
                        "train/ and test/, or a folder of IDX files)")
    kind, fingerprint = _fingerprint(path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_dir / f"{_name_of(path)}-{fingerprint}.pt"
    cached = _read_cache(entry)
    if cached is not None:
        return cached
    if kind == "idx":
        arrays, classes = _decode_idx(path), list(FASHION_MNIST_CLASSES)
    else:
        arrays, classes = _decode_image_folder(path, kind)
    data = _assemble(arrays, classes, _name_of(path))
    _write_cache(entry, data)
    return data


# ---------------------------------------------------------------------------------------- kinds and keys
def _name_of(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fingerprint(path: Path) -> tuple[str, str]:
    digest = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    if path.is_file():
        if not path.name.endswith((".tar", ".tar.gz", ".tgz")):
            raise DataError(f"{path}: not a tarball (.tar, .tar.gz, .tgz); give a tarball, an ImageFolder "
                            "directory with train/ and test/, or a folder of IDX files")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return "tar", digest.hexdigest()[:24]
    if any(_idx_file(path, stem) for stem in IDX_FILES.values()):
        missing = [stem for stem in IDX_FILES.values() if _idx_file(path, stem) is None]
        if missing:
            raise DataError(f"{path}: IDX folder lacks {', '.join(missing)} (plain or .gz)")
        for stem in IDX_FILES.values():
            file = _idx_file(path, stem)
            assert file is not None
            digest.update(file.name.encode() + file.read_bytes())
        return "idx", digest.hexdigest()[:24]
    for split in SPLITS:
        if not (path / split).is_dir():
            raise DataError(f"{path}: no {split}/ folder: an ImageFolder directory needs train/<class>/<image> "
                            "and test/<class>/<image> (or give a tarball or a folder of IDX files)")
    for file in sorted(p for split in SPLITS for p in (path / split).rglob("*") if p.is_file()):
        st = file.stat()
        digest.update(f"{file.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "dir", digest.hexdigest()[:24]


# ---------------------------------------------------------------------------------------- decoding
def _decode_image_folder(path: Path, kind: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Images by split and class, from a tarball or a directory; labels follow the sorted class names."""
    files: dict[str, dict[str, list[tuple[str, bytes]]]] = {split: {} for split in SPLITS}
    if kind == "tar":
        try:
            with tarfile.open(path) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                prefix = _tar_prefix([m.name for m in members], path)
                for m in sorted(members, key=lambda m: m.name):
                    parts = m.name[len(prefix):].split("/")
                    if len(parts) == 3 and parts[0] in SPLITS and parts[2].lower().endswith(IMAGE_EXTENSIONS):
                        blob = tar.extractfile(m)
                        assert blob is not None
                        files[parts[0]].setdefault(parts[1], []).append((f"{path}:{m.name}", blob.read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable tarball ({e})") from None
    else:
        for split in SPLITS:
            for file in sorted((path / split).glob("*/*")):
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                    files[split].setdefault(file.parent.name, []).append((str(file), file.read_bytes()))
    for split in SPLITS:
        if not files[split]:
            raise DataError(f"{path}: no images under {split}/<class>/ (expected the ImageFolder layout "
                            f"train/<class>/<image>, test/<class>/<image>; image types: {', '.join(IMAGE_EXTENSIONS)})")
    classes = sorted(files["train"])
    if sorted(files["test"]) != classes:
        raise DataError(f"{path}: test/ classes {sorted(files['test'])} differ from train/ classes {classes}")
    arrays: dict[str, np.ndarray] = {}
    reference: tuple[str, tuple[int, int], str] | None = None
    for split in SPLITS:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for name, blob in files[split][cls]:
                image, reference = _decode_one(name, blob, reference)
                images.append(image)
                labels.append(label)
        arrays[f"{split}_x"] = np.stack(images)
        arrays[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    return arrays, classes


def _tar_prefix(names: list[str], path: Path) -> str:
    """``""`` when splits sit at the root of the tarball, ``"top/"`` when under one top folder."""
    for prefix in ("",) + tuple(sorted({n.split("/", 1)[0] + "/" for n in names if "/" in n})):
        if any(n.startswith(prefix + "train/") for n in names):
            return prefix
    raise DataError(f"{path}: tarball of the wrong layout: no train/<class>/<image> at its root or under one "
                    "top folder (expected ImageFolder layout: train/<class>/*.jpg, test/<class>/*.jpg)")


def _decode_one(
    name: str, blob: bytes, reference: tuple[str, tuple[int, int], str] | None
) -> tuple[np.ndarray, tuple[str, tuple[int, int], str]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
            if reference is not None:
                mode = reference[2]
            array = np.asarray(im.convert(mode), dtype=np.uint8)
            size = im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{name}: corrupt or unreadable image ({e})") from None
    if reference is None:
        reference = (name, size, mode)
    elif size != reference[1]:
        raise DataError(f"{name}: image of size {size[0]}x{size[1]}, but {reference[0]} is "
                        f"{reference[1][0]}x{reference[1][1]}; all images must share one size")
    if array.ndim == 2:
        array = array[None]  # (1, H, W)
    else:
        array = array.transpose(2, 0, 1)  # (C, H, W)
    return np.ascontiguousarray(array), reference


def _read_idx(file: Path) -> np.ndarray:
    opener = gzip.open if file.name.endswith(".gz") else open
    try:
        with opener(file, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
            raise ValueError(f"not an unsigned-byte IDX file (magic {raw[:4].hex()})")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(shape)):
            raise ValueError(f"holds {body.size} bytes of data, the header says {int(np.prod(shape))}")
        return body.reshape(shape).copy()
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise DataError(f"{file}: corrupt IDX file ({e})") from None


def _decode_idx(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        file = _idx_file(folder, stem)
        assert file is not None
        array = _read_idx(file)
        if key.endswith("_x"):
            if array.ndim != 3:
                raise DataError(f"{file}: expected images [N, H, W], got shape {array.shape}")
            array = array[:, None]  # (N, 1, H, W)
        elif array.ndim != 1:
            raise DataError(f"{file}: expected labels [N], got shape {array.shape}")
        arrays[key] = array
    for split in SPLITS:
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise DataError(f"{folder}: {split} has {len(arrays[f'{split}_x'])} images but "
                            f"{len(arrays[f'{split}_y'])} labels")
    top = max(int(arrays["train_y"].max()), int(arrays["test_y"].max()))
    if top >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{folder}: label {top} is out of range for the {len(FASHION_MNIST_CLASSES)} classes")
    return arrays


def _assemble(arrays: dict[str, np.ndarray], classes: list[str], name: str) -> ImageData:
    train = torch.from_numpy(np.ascontiguousarray(arrays["train_x"]))
    flat = train.permute(1, 0, 2, 3).reshape(train.shape[1], -1).double() / 255.0
    return ImageData(
        train_x=train,
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(arrays["test_x"])),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        classes=list(classes),
        mean=tuple(float(m) for m in flat.mean(1)),
        std=tuple(float(s) for s in flat.std(1)),
        name=name,
    )


# ---------------------------------------------------------------------------------------- cache
def _read_cache(entry: Path) -> ImageData | None:
    try:
        blob = torch.load(entry, weights_only=True)
        return ImageData(**{**blob, "mean": tuple(blob["mean"]), "std": tuple(blob["std"])})
    except Exception:  # noqa: BLE001 - absent or damaged (any unpickling error): decode again
        return None


def _write_cache(entry: Path, data: ImageData) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        torch.save({k: getattr(data, k) for k in data.__dataclass_fields__}, tmp)
        os.replace(tmp, entry)
    except OSError:  # an unwritable cache only costs the next decode
        pass


# ---------------------------------------------------------------------------------------- split and transforms
def nb201_split(data: ImageData, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """NAS-Bench-201's split of the training set into halves: train (25,000) and validation (25,000) on CIFAR-10.

    Stratified by class (each class split in half, a seeded shuffle), so both halves keep the class
    balance. The official split file is not available here; the sizes and stratification are the same.
    """
    gen = torch.Generator().manual_seed(seed)
    train_idx, valid_idx = [], []
    for label in range(data.num_classes):
        members = torch.nonzero(data.train_y == label).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        half = len(members) // 2
        train_idx.append(members[:half])
        valid_idx.append(members[half:])
    return torch.cat(train_idx).sort().values, torch.cat(valid_idx).sort().values


def normalise(x_uint8: torch.Tensor, data: ImageData) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float, scaled to [0, 1] and standardised with the data set's mean and std."""
    mean = torch.tensor(data.mean, device=x_uint8.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=x_uint8.device).view(1, -1, 1, 1)
    return (x_uint8.float().div_(255.0) - mean) / std


def augment(x_uint8: torch.Tensor, generator: torch.Generator, data: ImageData, padding: int = 4) -> torch.Tensor:
    """Random crop after ``padding`` zero pixels on each side, and a random horizontal flip, then normalise.

    The crop offsets and flips come from ``generator`` (on the CPU), so a batch's augmentation is
    reproducible; the crop and the flip are one gather.
    """
    b, c, h, w = x_uint8.shape
    padded = torch.nn.functional.pad(x_uint8, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    oy = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    flip = torch.rand(b, 1, generator=generator) < 0.5
    rows = oy + torch.arange(h)  # (B, H)
    cols = ox + torch.arange(w)  # (B, W)
    cols = torch.where(flip, cols.flip(1), cols)
    dev = x_uint8.device
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    out = padded[bi, ci, rows.to(dev).view(b, 1, h, 1), cols.to(dev).view(b, 1, 1, w)]  # (B, C, H, W)
    return normalise(out, data)
