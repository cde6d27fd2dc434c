"""The data section of a recipe: :class:`DataConfig`, validated once when it is built."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from llmnas.errors import DataError

SPLITS = ("tail", "head")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the text comes from, how it is tokenised and split, and where tokens are cached."""

    source: str
    """``"stdlib"`` (this interpreter's standard-library source code, the embedded default corpus),
    ``"hf:NAME"`` (a ``datasets`` data set, loaded with ``load_dataset``; needs the network unless
    cached), or a path: a UTF-8 text file, a folder of text files, or a ``save_to_disk`` directory."""

    block_size: int
    """Tokens per training window (the context length); both splits must hold more than this."""

    tokenizer: str = "byte"
    """``"byte"`` (257 ids: the 256 bytes and ``<|endoftext|>``), ``"char"`` (the corpus's distinct
    characters), or a Hugging Face tokenizer name or local directory."""

    val_fraction: float = 0.1
    """Share of the text held out for validation, strictly between 0 and 1."""

    split: Literal["tail", "head"] = "tail"
    """Which end of the text is validation: ``"tail"`` (nanoGPT: the first ``1 - val_fraction`` of
    the text trains, the rest validates) or ``"head"`` (the first ``val_fraction`` validates). The
    cut is at a byte for ``"byte"`` and at a character otherwise."""

    holdout: float | None = None
    """Share of the training part carved off, from its end, as the validation split the search sees
    (``None``: the corpus's own validation split validates). With ``holdout: 0.1`` the first 90 % of
    the training part trains and its last 10 % validates, so the corpus's validation split (the one
    final results are reported on) is never seen while architectures are selected. Retraining the
    winners drops it (``holdout: null``) to train on the whole training part."""

    text_column: str = "text"
    """Column holding the text, for ``datasets`` sources."""

    dataset_config: str | None = None
    """Configuration name for ``hf:NAME`` sources (e.g. ``wikitext-103-raw-v1``)."""

    dataset_split: str = "train"
    """Split of a ``datasets`` source (or of a saved ``DatasetDict``) that is read as the corpus."""

    data_files: str | tuple[str, ...] | None = None
    """``data_files`` for ``load_dataset``, e.g. with ``source: hf:text`` to read local files."""

    datasets_cache_dir: str | None = None
    """``cache_dir`` for ``load_dataset``; ``None`` uses the HF datasets cache."""

    glob: str = "**/*.txt"
    """Which files of a folder source are read (``**`` recurses); sorted by relative path."""

    separator: str = "\n"
    """Text placed between documents (files of a folder or of the stdlib corpus, rows of a data set)."""

    max_bytes: int | None = None
    """Keep only the first this many bytes of the corpus (``None``: all of it)."""

    cache_dir: str | None = None
    """Token cache folder; ``None`` uses ``$LLMNAS_CACHE/tokens`` or ``~/.cache/llmnas/tokens``."""

    use_cache: bool = True
    """Read and write the token cache; ``False`` always tokenises and writes nothing."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.source, str) or not self.source:
            problems.append(f"source={self.source!r}: must be a non-empty string")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            problems.append(f"block_size={self.block_size!r}: must be a positive integer")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            problems.append(f"tokenizer={self.tokenizer!r}: must be 'byte', 'char' or a HF name or path")
        vf = self.val_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1:
            problems.append(f"val_fraction={vf!r}: must be a number strictly between 0 and 1")
        ho = self.holdout
        if ho is not None and (isinstance(ho, bool) or not isinstance(ho, (int, float)) or not 0 < ho < 1):
            problems.append(f"holdout={ho!r}: must be null or a number strictly between 0 and 1")
        if self.split not in SPLITS:
            problems.append(f"split={self.split!r}: must be one of {list(SPLITS)}")
        mb = self.max_bytes
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
            problems.append(f"max_bytes={mb!r}: must be a positive integer or null")
        if isinstance(self.data_files, list):  # YAML lists arrive as lists; keep the spec hashable
            object.__setattr__(self, "data_files", tuple(self.data_files))
        if problems:
            raise DataError("invalid data config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "data") -> DataConfig:
        """Build from a recipe mapping, naming ``where`` (e.g. ``"recipe.yaml: data"``) in errors.

        Raises:
            DataError: an unknown or missing key, or a value out of range.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}; allowed keys are {names}")
        missing = [n for n in ("source", "block_size") if n not in values]
        if missing:
            raise DataError(f"{where}: missing required key(s) {missing}")
        try:
            return cls(**values)
        except DataError as e:
            raise DataError(f"{where}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (``from_dict`` inverts it)."""
        d = dataclasses.asdict(self)
        if isinstance(d["data_files"], tuple):
            d["data_files"] = list(d["data_files"])
        return d
