"""Data: corpus sources, tokenizers, train/validation token arrays with a cache, and block datasets.

The training loop calls::

    data = prepare_data(DataConfig(source="stdlib", block_size=256))   # or DataConfig.from_dict(...)
    train = RandomBlocks(data.train, 256, num_samples=steps * batch, seed=seed)
    val = EvalBlocks(data.val, 256)
    data.meta.bits_per_byte(val_loss)

and export saves ``data.tokenizer.hf`` (or :func:`byte_tokenizer()`) with ``save_pretrained``.
"""

from __future__ import annotations

from llmnas.data.blocks import IGNORE_INDEX, EvalBlocks, RandomBlocks
from llmnas.data.cache import default_cache_dir
from llmnas.data.config import DataConfig
from llmnas.data.prepare import DataMeta, TokenData, prepare_data
from llmnas.data.sources import Corpus, load_corpus, stdlib_corpus, stdlib_files
from llmnas.data.tokenizers import (
    EOT,
    TextTokenizer,
    byte_tokenizer,
    char_tokenizer,
    hf_tokenizer,
    load_tokenizer,
)

__all__ = [
    "EOT",
    "IGNORE_INDEX",
    "Corpus",
    "DataConfig",
    "DataMeta",
    "EvalBlocks",
    "RandomBlocks",
    "TextTokenizer",
    "TokenData",
    "byte_tokenizer",
    "char_tokenizer",
    "default_cache_dir",
    "hf_tokenizer",
    "load_corpus",
    "load_tokenizer",
    "prepare_data",
    "stdlib_corpus",
    "stdlib_files",
]
