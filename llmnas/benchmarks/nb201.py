"""NAS-Bench-201 tables: accuracies and latencies of the 15,625 cells, by official index.

:func:`load_nb201` reads the three files of ``shared/data/nasbench201/`` (see its ``PROVENANCE.md``):

- ``nb201_acc_12ep.csv``: 12-epoch validation and test accuracy (the search signal), columns
  ``arch, cellstr, cifar10-test, cifar10-val, cifar100-test, cifar100-val, imagenet-test, imagenet-val``;
- ``nb201_test_acc_200ep.csv``: 200-epoch test accuracy (the reported result), columns
  ``CIFAR10TestAccuracy200Epochs, CIFAR100TestAccuracy200Epochs, ImageNetTestAccuracy200Epochs,
  ArchitectureString, UniqueString``;
- ``nb201_latency_ms.csv.gz`` (optional): latency in ms on 27 device settings, ``index, arch_str, <device>...``.

:func:`load_official` reads the benchmark's own files into the same :class:`NB201Table` (see
:mod:`llmnas.benchmarks.nb201_official`). Accuracies are in percent, as the benchmark gives them.

Example:
    >>> table = load_nb201("../shared/data/nasbench201")           # doctest: +SKIP
    >>> best = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    >>> i = table.index_of(best)                                     # doctest: +SKIP
    >>> table.test200["cifar10"][i]                                  # doctest: +SKIP
    94.37333333333333
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmnas.errors import DataError
from llmnas.space.base import Params
from llmnas.space.nb201 import N_CELLS, NB201Cell, NB201Space

DATASETS = ("cifar10", "cifar100", "imagenet16-120")
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet16-120": "ImageNet16-120"}
METRICS = ("val12", "test12", "test200")
ACC12_FILE = "nb201_acc_12ep.csv"
TEST200_FILE = "nb201_test_acc_200ep.csv"
LATENCY_FILE = "nb201_latency_ms.csv.gz"
_ACC12_COLUMNS = {
    "cifar10": ("cifar10-val", "cifar10-test"),
    "cifar100": ("cifar100-val", "cifar100-test"),
    "imagenet16-120": ("imagenet-val", "imagenet-test"),
}
_TEST200_COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "imagenet16-120": "ImageNetTestAccuracy200Epochs",
}


@dataclass(frozen=True, eq=False)
class NB201Table:
    """Per-cell results, one array entry per official index.

    Attributes:
        arch_strs: official architecture strings; position ``i`` is official index ``i``.
        val12: 12-epoch validation accuracy (%) by data set (``cifar10`` is the ``cifar10-valid`` split).
        test12: 12-epoch test accuracy (%) by data set.
        test200: 200-epoch test accuracy (%) by data set -- the number NAS-Bench-201 papers report.
        latency: inference latency (ms) by device setting (may be empty).
        source: where the table was read from (for messages).
    """

    arch_strs: tuple[str, ...]
    val12: Mapping[str, np.ndarray]
    test12: Mapping[str, np.ndarray]
    test200: Mapping[str, np.ndarray]
    latency: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.arch_strs)
        for name in ("val12", "test12", "test200", "latency"):
            for key, arr in getattr(self, name).items():
                if np.shape(arr) != (n,):
                    raise DataError(f"{self.source}: {name}[{key!r}] has shape {np.shape(arr)}, expected ({n},)")
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.arch_strs)})

    def __len__(self) -> int:
        return len(self.arch_strs)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.latency)

    def index_of(self, cell: str | NB201Cell | Params) -> int:
        """The official index of a cell given as official string, :class:`NB201Cell` or Optuna params."""
        if isinstance(cell, NB201Cell):
            text = cell.to_str()
        elif isinstance(cell, Mapping):
            text = NB201Space().decode(dict(cell)).to_str()
        else:
            text = NB201Cell.from_str(cell).to_str()
        try:
            return self._index[text]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"{text} is not in {self.source}") from None

    def cell(self, index: int) -> NB201Cell:
        return NB201Cell.from_str(self.arch_strs[index])

    def metric(self, name: str, dataset: str) -> np.ndarray:
        """``name`` in :data:`METRICS` for ``dataset`` in :data:`DATASETS`; a clear error otherwise."""
        if name not in METRICS:
            raise DataError(f"unknown NAS-Bench-201 metric {name!r} (allowed: {', '.join(METRICS)})")
        table = getattr(self, name)
        if dataset not in table:
            raise DataError(
                f"{self.source} has no {name} for data set {dataset!r} (available: {', '.join(table) or 'none'})"
            )
        return table[dataset]

    def latency_of(self, device: str) -> np.ndarray:
        if device not in self.latency:
            raise DataError(
                f"{self.source} has no latency for device {device!r} "
                f"(available: {', '.join(self.latency) or 'none; is ' + LATENCY_FILE + ' there?'})"
            )
        return self.latency[device]


# ---------------------------------------------------------------------- the shared CSV files
def load_nb201(path: str | Path, cache_dir: str | Path | None = None) -> NB201Table:
    """Read the NAS-Bench-201 CSV tables in folder ``path``.

    Args:
        path: folder holding :data:`ACC12_FILE` and :data:`TEST200_FILE` (and optionally :data:`LATENCY_FILE`).
        cache_dir: if given, the parsed arrays are kept there as ``.npz`` (keyed by the files' size and
            modification time) so the next load skips CSV parsing.

    Raises:
        DataError: a missing folder or file, a missing column, a non-numeric value, rows that disagree
            between files, or an architecture string that does not parse.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"NAS-Bench-201 data folder not found: {folder}")
    files = [folder / ACC12_FILE, folder / TEST200_FILE]
    for f in files:
        if not f.is_file():
            raise DataError(f"NAS-Bench-201 file missing: {f} (expected {ACC12_FILE} and {TEST200_FILE} in {folder})")
    latency_path = folder / LATENCY_FILE
    if latency_path.is_file():
        files.append(latency_path)
    cache = _cache_path(cache_dir, files) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            return _from_npz(cache, str(folder))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    table = _parse_csvs(folder, latency_path if latency_path.is_file() else None)
    if cache is not None:
        _to_npz(table, cache)
    return table


def _parse_csvs(folder: Path, latency_path: Path | None) -> NB201Table:
    acc_path, test_path = folder / ACC12_FILE, folder / TEST200_FILE
    acc_cols, acc_rows = _read_csv(acc_path)
    _require(acc_path, acc_cols, ["arch", "cellstr", *[c for pair in _ACC12_COLUMNS.values() for c in pair]])
    test_cols, test_rows = _read_csv(test_path)
    _require(test_path, test_cols, ["ArchitectureString", *_TEST200_COLUMNS.values()])

    strs = _arch_column(acc_path, acc_rows, acc_cols.index("cellstr"))
    for i, row in enumerate(acc_rows):
        if row[acc_cols.index("arch")].strip() != str(i):
            raise DataError(f"{acc_path}: row {i + 2}: arch={row[0]!r}, expected the row number {i}")
    _same_archs(test_path, strs, _arch_column(test_path, test_rows, test_cols.index("ArchitectureString")))
    val12, test12, test200 = {}, {}, {}
    for ds, (val_col, test_col) in _ACC12_COLUMNS.items():
        val12[ds] = _numeric(acc_path, acc_rows, acc_cols, val_col)
        test12[ds] = _numeric(acc_path, acc_rows, acc_cols, test_col)
        test200[ds] = _numeric(test_path, test_rows, test_cols, _TEST200_COLUMNS[ds])
    latency = {}
    if latency_path is not None:
        lat_cols, lat_rows = _read_csv(latency_path)
        _require(latency_path, lat_cols, ["index", "arch_str"])
        _same_archs(latency_path, strs, _arch_column(latency_path, lat_rows, lat_cols.index("arch_str")))
        for col in lat_cols:
            if col not in ("index", "arch_str"):
                latency[col] = _numeric(latency_path, lat_rows, lat_cols, col)
    return NB201Table(tuple(strs), val12, test12, test200, latency, source=str(folder))


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DataError(f"{path} is empty")
    header, body = [c.strip() for c in rows[0]], [r for r in rows[1:] if r]
    if not body:
        raise DataError(f"{path} has a header but no rows")
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}: row {i + 2} has {len(row)} fields, the header has {len(header)}")
    return header, body


def _require(path: Path, columns: list[str], needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns)})")


def _arch_column(path: Path, rows: list[list[str]], col: int) -> list[str]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(NB201Cell.from_str(row[col].strip()).to_str())
        except ValueError as e:
            raise DataError(f"{path}: row {i + 2}: {e}") from None
    return out


def _same_archs(path: Path, expected: list[str], found: list[str]) -> None:
    if len(found) != len(expected):
        raise DataError(f"{path} has {len(found)} rows, {ACC12_FILE} has {len(expected)}")
    for i, (a, b) in enumerate(zip(expected, found, strict=True)):
        if a != b:
            raise DataError(f"{path}: row {i + 2} is {b}, but row {i} of {ACC12_FILE} is {a} (files out of order?)")


def _numeric(path: Path, rows: list[list[str]], columns: list[str], name: str) -> np.ndarray:
    col = columns.index(name)
    try:
        return np.array([float(r[col]) for r in rows])
    except ValueError:
        bad = next(i for i, r in enumerate(rows) if not _is_float(r[col]))
        raise DataError(f"{path}: row {bad + 2}, column {name!r}: {rows[bad][col]!r} is not a number") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- cache
def _cache_path(cache_dir: str | Path, files: list[Path]) -> Path:
    stamp = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return Path(cache_dir) / f"nb201-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.npz"


def _to_npz(table: NB201Table, path: Path) -> None:
    arrays = {"arch_strs": np.array(table.arch_strs)}
    for name in ("val12", "test12", "test200", "latency"):
        for key, arr in getattr(table, name).items():
            arrays[f"{name}/{key}"] = arr
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _from_npz(path: Path, source: str) -> NB201Table:
    with np.load(path, allow_pickle=False) as data:
        parts: dict[str, dict[str, np.ndarray]] = {"val12": {}, "test12": {}, "test200": {}, "latency": {}}
        for key in data.files:
            if "/" in key:
                name, sub = key.split("/", 1)
                parts[name][sub] = data[key]
        strs = tuple(str(s) for s in data["arch_strs"])
    return NB201Table(strs, parts["val12"], parts["test12"], parts["test200"], parts["latency"], source=source)


def is_complete(table: NB201Table) -> bool:
    """Whether the table lists all 15,625 cells of the full space."""
    return len(table) == N_CELLS


def load_official(path: str | Path, *, trusted: bool = False) -> NB201Table:
    """Read an official NAS-Bench-201 ``.pth`` or NATS-Bench ``tss`` file/archive; see
    :func:`llmnas.benchmarks.nb201_official.load_official`."""
    from llmnas.benchmarks.nb201_official import load_official as _load

    return _load(path, trusted=trusted)
