"""From a :class:`DataConfig` to train/validation token arrays: :func:`prepare_data`.

The split is deterministic and follows nanoGPT by default: the first ``1 - val_fraction`` of the
text trains and the rest validates (``int(n * (1 - val_fraction))`` training units, where a unit is
a byte for the byte-level tokenizer and a character otherwise). On tiny-shakespeare at character
level this gives nanoGPT's 1,003,854 training and 111,540 validation tokens.

With ``holdout`` set, the validation split is carved from the end of the training part instead and
the corpus's own validation split is left out altogether: on tiny-shakespeare, ``holdout=0.1`` gives
903,468 training and 100,386 validation tokens, all from nanoGPT's training split, so a search that
selects on them never sees the split its winners are reported on.

Example:
    >>> data = prepare_data(DataConfig(source="stdlib", block_size=64, max_bytes=100_000))
    >>> data.vocab_size, data.train.dtype
    (257, dtype('uint16'))
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from llmnas.data.cache import cache_key, default_cache_dir, load_entry, save_entry
from llmnas.data.config import DataConfig
from llmnas.data.sources import Corpus, load_corpus
from llmnas.data.tokenizers import TextTokenizer, char_tokenizer, load_tokenizer
from llmnas.errors import DataError

# Bump when tokenisation or splitting changes, so old cache entries are not read.
CACHE_FORMAT = "llmnas.tokens/1"


@dataclass(frozen=True)
class DataMeta:
    """What the token arrays were made from; JSON-able through :meth:`to_dict` (for study records).

    Attributes:
        source: one line describing the corpus, e.g. "Python 3.11.7 standard-library source code (...)".
        source_spec: the ``source`` string of the config.
        corpus_sha256: SHA-256 of the corpus text (UTF-8).
        corpus_bytes: UTF-8 bytes of the corpus.
        corpus_chars: characters of the corpus.
        tokenizer: the tokenizer spec (``"byte"``, ``"char"`` or an HF name/path).
        tokenizer_fingerprint: SHA-256 of the tokenizer's backend JSON.
        vocab_size: number of token ids.
        split: ``"tail"`` or ``"head"`` (which end validates).
        val_fraction: share of the text held out.
        holdout: share of the training part that validates instead (``None``: the corpus's validation
            split validates).
        n_train_tokens: tokens in the training split.
        n_val_tokens: tokens in the validation split.
        train_bytes: UTF-8 bytes of the training text.
        train_chars: characters of the training text.
        val_bytes: UTF-8 bytes of the validation text (for bits per byte).
        val_chars: characters of the validation text (for bits per character).
        python_version: the interpreter's version for the ``stdlib`` corpus, else ``None``.
        source_info: facts about the source (number of files, path, ...).
        cache_key: the token-cache key of these arrays.
        tokenize_seconds: seconds it took to tokenise (when the entry was made).
    """

    source: str
    source_spec: str
    corpus_sha256: str
    corpus_bytes: int
    corpus_chars: int
    tokenizer: str
    tokenizer_fingerprint: str
    vocab_size: int
    split: str
    val_fraction: float
    n_train_tokens: int
    n_val_tokens: int
    train_bytes: int
    train_chars: int
    val_bytes: int
    val_chars: int
    holdout: float | None = None
    python_version: str | None = None
    source_info: dict[str, Any] = field(default_factory=dict)
    cache_key: str = ""
    tokenize_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def bits_per_byte(self, loss: float) -> float:
        """Bits per UTF-8 byte of validation text, from a mean validation loss in nats per token."""
        return loss * self.n_val_tokens / (self.val_bytes * math.log(2))

    def bits_per_char(self, loss: float) -> float:
        """Bits per character of validation text, from a mean validation loss in nats per token."""
        return loss * self.n_val_tokens / (self.val_chars * math.log(2))


@dataclass(frozen=True, eq=False)
class TokenData:
    """Tokenised train and validation splits with their tokenizer.

    Attributes:
        train: training token ids (uint16 when the vocabulary fits, else int32).
        val: validation token ids, same dtype.
        tokenizer: the tokenizer (``tokenizer.hf`` is the HF tokenizer to export).
        meta: where the tokens came from and the counts for bits per byte/character.
        from_cache: whether the arrays were read from the token cache instead of tokenised now.
        seconds: wall time of this :func:`prepare_data` call.
    """

    train: np.ndarray
    val: np.ndarray
    tokenizer: TextTokenizer
    meta: DataMeta
    from_cache: bool = False
    seconds: float = 0.0

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def hf_tokenizer(self) -> PreTrainedTokenizerBase:
        return self.tokenizer.hf


def _n_train(n: int, val_fraction: float) -> int:
    return int(n * (1 - val_fraction))


def _split(seq: Any, n_train: int, where: str) -> tuple[Any, Any]:
    """(train, val) of a sequence: ``where == "tail"`` keeps the end for validation."""
    if where == "tail":
        return seq[:n_train], seq[n_train:]
    n_val = len(seq) - n_train
    return seq[n_val:], seq[:n_val]


def _train_val(seq: Any, cfg: DataConfig) -> tuple[Any, Any]:
    """(train, val) of the corpus under ``cfg``: the corpus split, then, with a holdout, the training
    part split again at its end (the corpus's validation part is dropped: the search never sees it)."""
    train, val = _split(seq, _n_train(len(seq), cfg.val_fraction), cfg.split)
    if cfg.holdout is not None:
        train, val = _split(train, _n_train(len(train), cfg.holdout), "tail")
    return train, val


def _utf8_chars(data: np.ndarray) -> int:
    """Characters in UTF-8 bytes: the bytes that do not continue a character."""
    return int(np.count_nonzero((data & 0xC0) != 0x80))


def _tokenize(corpus: Corpus, tok: TextTokenizer, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Split and encode; returns train, val and the size counts for :class:`DataMeta`."""
    if tok.kind == "byte":
        ids = tok.encode(corpus.text)
        train, val = _train_val(ids, cfg)
        counts = {"train_bytes": len(train), "train_chars": _utf8_chars(train),
                  "val_bytes": len(val), "val_chars": _utf8_chars(val)}
    else:
        train_text, val_text = _train_val(corpus.text, cfg)
        train, val = tok.encode(train_text), tok.encode(val_text)
        counts = {"train_bytes": len(train_text.encode("utf-8")), "train_chars": len(train_text),
                  "val_bytes": len(val_text.encode("utf-8")), "val_chars": len(val_text)}
    return train, val, counts


def _check_sizes(train: np.ndarray, val: np.ndarray, cfg: DataConfig, source: str) -> None:
    need = cfg.block_size + 1
    what = f"val_fraction (now {cfg.val_fraction})"
    if cfg.holdout is not None:
        what = f"holdout (now {cfg.holdout}: the validation split is that share of the training part)"
    total = len(train) + len(val)
    if total < need:
        raise DataError(
            f"the corpus ({source}) has {total} tokens, smaller than one block: block_size={cfg.block_size} "
            f"needs at least {need}; use a larger corpus or a smaller block_size"
        )
    for name, arr in (("training", train), ("validation", val)):
        if len(arr) < need:
            raise DataError(
                f"the {name} split of {source} has {len(arr)} tokens, fewer than one block of "
                f"block_size={cfg.block_size} (+1 target): use a larger corpus, a smaller block_size or "
                f"a different {what}"
            )


def prepare_data(cfg: DataConfig, *, local_files_only: bool = False) -> TokenData:
    """Read the corpus, split it, tokenise it (or read the tokens from the cache).

    Args:
        cfg: the data section of a recipe.
        local_files_only: for an HF tokenizer name, do not try the network.

    Returns:
        The train/val token arrays with their tokenizer and :class:`DataMeta`.

    Raises:
        DataError: a missing path, an empty corpus, a split smaller than one block, a tokenizer or
            data set that cannot be loaded, or characters outside a character vocabulary.
    """
    start = time.perf_counter()
    corpus = load_corpus(
        cfg.source, glob=cfg.glob, text_column=cfg.text_column, dataset_config=cfg.dataset_config,
        dataset_split=cfg.dataset_split, data_files=list(cfg.data_files) if isinstance(cfg.data_files, tuple)
        else cfg.data_files, datasets_cache_dir=cfg.datasets_cache_dir, separator=cfg.separator,
        max_bytes=cfg.max_bytes,
    )
    # The char vocabulary follows from the corpus, so "char" needs no tokenizer in the key (and on a
    # cache hit its vocabulary is read from the entry rather than recomputed from the text).
    tok = None if cfg.tokenizer == "char" else load_tokenizer(cfg.tokenizer, local_files_only=local_files_only)
    key = cache_key({
        "format": CACHE_FORMAT, "corpus_sha256": corpus.sha256, "tokenizer": cfg.tokenizer,
        "tokenizer_fingerprint": tok.fingerprint() if tok is not None and tok.kind == "hf" else None,
        "split": cfg.split, "val_fraction": cfg.val_fraction,
        # only when set, so that the keys of existing entries (no holdout) stay valid
        **({"holdout": cfg.holdout} if cfg.holdout is not None else {}),
    })
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()

    cached = load_entry(cache_dir, key) if cfg.use_cache else None
    if cached is not None:
        train, val, stored = cached
        if tok is None:
            tok = TextTokenizer("char", "char", char_tokenizer(stored["char_vocab"]))
        meta = DataMeta.from_dict(stored)
        _check_sizes(train, val, cfg, meta.source)
        return TokenData(train, val, tok, meta, from_cache=True, seconds=time.perf_counter() - start)

    t0 = time.perf_counter()
    if tok is None:
        tok = load_tokenizer("char", corpus.text)
    train, val, counts = _tokenize(corpus, tok, cfg)
    meta = DataMeta(
        source=corpus.description, source_spec=cfg.source, corpus_sha256=corpus.sha256,
        corpus_bytes=len(corpus.text.encode("utf-8")), corpus_chars=len(corpus.text),
        tokenizer=cfg.tokenizer, tokenizer_fingerprint=tok.fingerprint(), vocab_size=tok.vocab_size,
        split=cfg.split, val_fraction=cfg.val_fraction, holdout=cfg.holdout,
        n_train_tokens=len(train), n_val_tokens=len(val),
        python_version=corpus.info.get("python_version"), source_info=corpus.info, cache_key=key,
        tokenize_seconds=time.perf_counter() - t0, **counts,
    )
    _check_sizes(train, val, cfg, meta.source)
    if cfg.use_cache:
        stored = meta.to_dict()
        if tok.kind == "char":
            stored["char_vocab"] = tok.chars
        save_entry(cache_dir, key, train, val, stored)
    return TokenData(train, val, tok, meta, from_cache=False, seconds=time.perf_counter() - start)
