"""Corpus sources: where the text comes from, read into one string with a description and a hash.

A source is named by one string (the ``source`` of a data recipe):

- ``"stdlib"``: the embedded default corpus, the running interpreter's own standard-library ``.py``
  files ("Python <version> standard-library source code"), present on every machine;
- ``"hf:NAME"``: a ``datasets`` data set loaded with ``datasets.load_dataset`` (needs the network
  unless it is in the HF cache; ``hf:text``/``hf:json`` with ``data_files`` read local files);
- a path: a text file, a folder of text files (recursive, sorted, filtered by a glob), or a
  directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Documents (files, rows) are joined with a separator (default ``"\\n"``); ``max_bytes`` keeps only
the first bytes of the joined text (cut back to a whole character). Everything is deterministic:
files in sorted order of their relative POSIX paths, rows in data-set order.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmnas.errors import DataError

STDLIB = "stdlib"
HF_PREFIX = "hf:"

# The stdlib corpus leaves out every .py file below a directory with one of these names (test
# suites, third-party packages, byte-code caches) or below the build's config-* directory, and the
# build-specific _sysconfigdata*.py, which holds this machine's compiler flags and paths.
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
STDLIB_EXCLUDED_DIR_PREFIXES = ("config-",)
STDLIB_EXCLUDED_FILE_PREFIXES = ("_sysconfigdata",)


@dataclass(frozen=True, eq=False)
class Corpus:
    """The text of a source, with what it is.

    Attributes:
        text: the whole corpus, documents joined by the separator.
        description: one line saying what the text is (recorded with every study).
        info: JSON-able facts about the source (kind, path, number of files, Python version, ...).
        sha256: SHA-256 of ``text`` encoded as UTF-8.
    """

    text: str
    description: str
    info: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @classmethod
    def of(cls, text: str, description: str, info: dict[str, Any]) -> Corpus:
        """A corpus with its hash computed; raises :class:`DataError` when ``text`` is empty."""
        if not text:
            raise DataError(f"the corpus is empty: {description}")
        return cls(text, description, info, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e})") from e


def _truncate_utf8(text: str, max_bytes: int | None) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``max_bytes`` bytes."""
    if max_bytes is None:
        return text
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", errors="ignore")


def _join(docs: Iterable[str], separator: str, max_bytes: int | None) -> tuple[str, int]:
    """Join documents, stopping once ``max_bytes`` is reached; returns the text and documents used."""
    parts: list[str] = []
    size = 0
    for doc in docs:
        parts.append(doc)
        # characters bound bytes from below, so this stops no earlier than the byte cap needs
        size += len(doc) + len(separator)
        if max_bytes is not None and size >= max_bytes:
            break
    return _truncate_utf8(separator.join(parts), max_bytes), len(parts)


def text_file_corpus(path: str | Path, *, max_bytes: int | None = None) -> Corpus:
    """One UTF-8 text file, read exactly (no newline translation)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"text file {str(path)!r} does not exist")
    text = _truncate_utf8(_read_text(p), max_bytes)
    return Corpus.of(text, f"text file {p}", {"kind": "file", "path": str(p.resolve())})


def folder_files(path: str | Path, glob: str = "**/*.txt") -> list[Path]:
    """Files below ``path`` matching ``glob`` (``**`` recurses), sorted by relative POSIX path."""
    root = Path(path).expanduser()
    return sorted((p for p in root.glob(glob) if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def text_folder_corpus(
    path: str | Path, *, glob: str = "**/*.txt", separator: str = "\n", max_bytes: int | None = None
) -> Corpus:
    """All files of a folder that match ``glob``, in sorted order, joined by ``separator``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"folder {str(path)!r} does not exist")
    files = folder_files(root, glob)
    if not files:
        raise DataError(f"folder {root} has no files matching {glob!r}")
    text, used = _join((_read_text(p) for p in files), separator, max_bytes)
    info = {"kind": "folder", "path": str(root.resolve()), "glob": glob, "n_files": used}
    return Corpus.of(text, f"folder {root} ({used} files matching {glob!r})", info)


def stdlib_root() -> Path:
    """The running interpreter's standard-library directory (``sysconfig`` path ``stdlib``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The ``.py`` files of the stdlib corpus, sorted by path relative to :func:`stdlib_root`.

    Excluded: files below directories named as in ``STDLIB_EXCLUDED_DIRS`` (test suites,
    site-packages, caches) or starting with ``config-``, and the build-specific ``_sysconfigdata*``.
    """
    root = stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune excluded folders instead of walking them (site-packages can hold most of the tree)
        dirnames[:] = [d for d in dirnames
                       if d not in STDLIB_EXCLUDED_DIRS and not d.startswith(STDLIB_EXCLUDED_DIR_PREFIXES)]
        found += [Path(dirpath, f) for f in filenames
                  if f.endswith(".py") and not f.startswith(STDLIB_EXCLUDED_FILE_PREFIXES)]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def stdlib_corpus(*, separator: str = "\n", max_bytes: int | None = None) -> Corpus:
    """The embedded default corpus: this interpreter's standard-library Python source code.

    The files of :func:`stdlib_files` are read as UTF-8 (files that are not are skipped and
    counted) and joined by ``separator``. ``info`` records the Python version, the number of files
    and bytes; the corpus hash is :attr:`Corpus.sha256`.
    """
    files = stdlib_files()
    skipped: list[str] = []

    def docs() -> Iterator[str]:
        for p in files:
            try:
                yield p.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(p.relative_to(stdlib_root()).as_posix())

    text, used = _join(docs(), separator, max_bytes)
    version = platform.python_version()
    n_bytes = len(text.encode("utf-8"))
    info = {
        "kind": "stdlib", "path": str(stdlib_root()), "python_version": version,
        "python_implementation": platform.python_implementation(), "n_files": used,
        "n_bytes": n_bytes, "skipped_non_utf8": skipped, "max_bytes": max_bytes,
    }
    cap = f", first {max_bytes:,} bytes" if max_bytes is not None else ""
    desc = f"Python {version} standard-library source code ({used} files, {n_bytes:,} bytes{cap})"
    return Corpus.of(text, desc, info)


def _dataset_docs(ds: Any, column: str, where: str) -> Iterator[str]:
    """The strings of ``column`` in row order (``None`` rows become empty documents)."""
    if column not in ds.column_names:
        raise DataError(
            f"{where} has no text column {column!r}; its columns are {list(ds.column_names)} "
            "(set text_column to one of them)"
        )
    for batch in ds.select_columns([column]).iter(batch_size=1000):
        for value in batch[column]:
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: column {column!r} holds {type(value).__name__} values, not text")
            yield value or ""


def _pick_split(ds: Any, split: str, where: str) -> Any:
    from datasets import DatasetDict

    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{where} has no split {split!r}; its splits are {list(ds)}")
        return ds[split]
    return ds


def saved_dataset_corpus(
    path: str | Path, *, split: str = "train", text_column: str = "text", separator: str = "\n",
    max_bytes: int | None = None,
) -> Corpus:
    """A directory written by ``Dataset.save_to_disk`` (or ``DatasetDict``: ``split`` picks one)."""
    import datasets

    root = Path(path).expanduser()
    where = f"saved datasets directory {root}"
    try:
        ds = datasets.load_from_disk(str(root))
    except Exception as e:  # noqa: BLE001 - a damaged folder raises anything (JSONDecodeError, KeyError, ArrowInvalid)
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        raise DataError(f"{where} could not be loaded ({cause}); is it a complete save_to_disk folder?") from e
    ds = _pick_split(ds, split, where)
    text, used = _join(_dataset_docs(ds, text_column, where), separator, max_bytes)
    info = {"kind": "saved_dataset", "path": str(root.resolve()), "split": split, "text_column": text_column,
            "n_rows": used, "fingerprint": getattr(ds, "_fingerprint", None)}
    return Corpus.of(text, f"{where}, column {text_column!r} ({used} rows)", info)


def hf_dataset_corpus(
    name: str, *, config: str | None = None, split: str = "train", text_column: str = "text",
    data_files: str | list[str] | None = None, cache_dir: str | None = None, separator: str = "\n",
    max_bytes: int | None = None,
) -> Corpus:
    """A ``datasets`` data set by name: ``datasets.load_dataset(name, config, split=split, ...)``.

    Needs the machine to be online unless the data set is in the HF datasets cache, or ``name`` is a
    packaged builder (``"text"``, ``"json"``, ``"csv"``, ``"parquet"``) reading local ``data_files``.
    """
    import datasets

    where = f"datasets data set {name!r}" + (f" config {config!r}" if config else "") + f" split {split!r}"
    try:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files, cache_dir=cache_dir)
    except (OSError, ValueError) as e:
        raise DataError(
            f"{where} could not be loaded: {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
            "Loading a data set by name needs the machine to be online (or the data set in the HF datasets "
            "cache); otherwise point the source at a local text file, folder or saved datasets directory."
        ) from e
    text, used = _join(_dataset_docs(ds, text_column, where), separator, max_bytes)
    info = {"kind": "hf_dataset", "name": name, "config": config, "split": split, "text_column": text_column,
            "data_files": data_files, "n_rows": used, "fingerprint": getattr(ds, "_fingerprint", None)}
    return Corpus.of(text, f"{where}, column {text_column!r} ({used} rows)", info)


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return ((path / "dataset_info.json").is_file() and (path / "state.json").is_file()) or (
        path / "dataset_dict.json"
    ).is_file()


def load_corpus(
    source: str, *, glob: str = "**/*.txt", text_column: str = "text", dataset_config: str | None = None,
    dataset_split: str = "train", data_files: str | list[str] | None = None, datasets_cache_dir: str | None = None,
    separator: str = "\n", max_bytes: int | None = None,
) -> Corpus:
    """The corpus named by ``source`` (see the module docstring for the forms it takes).

    Raises:
        DataError: the path does not exist, the folder has no matching files, the corpus is empty,
            a saved data set lacks the text column, or a named data set cannot be loaded.
    """
    if source == STDLIB:
        return stdlib_corpus(separator=separator, max_bytes=max_bytes)
    if source.startswith(HF_PREFIX):
        return hf_dataset_corpus(
            source[len(HF_PREFIX):], config=dataset_config, split=dataset_split, text_column=text_column,
            data_files=data_files, cache_dir=datasets_cache_dir, separator=separator, max_bytes=max_bytes,
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {source!r} does not exist (expected a text file, a folder of text files, a saved "
            f"datasets directory, {STDLIB!r}, or {HF_PREFIX}NAME for a datasets data set)"
        )
    if path.is_file():
        return text_file_corpus(path, max_bytes=max_bytes)
    if is_saved_dataset(path):
        return saved_dataset_corpus(path, split=dataset_split, text_column=text_column, separator=separator,
                                    max_bytes=max_bytes)
    return text_folder_corpus(path, glob=glob, separator=separator, max_bytes=max_bytes)
