"""The tokenizer an export ships: byte-level by default, character-level from a corpus, or any HF tokenizer.

The tokenizers themselves live in :mod:`llmnas.data.tokenizers`; this module only turns the
``--tokenizer`` value into one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmnas.errors import ExportError

SPEC_HELP = "byte (default), char:CORPUS_FILE, or a Hugging Face tokenizer name or directory"


def resolve_tokenizer(spec: str) -> Any:
    """A transformers tokenizer for ``spec``: ``byte``, ``char:PATH`` (the distinct characters of the
    text file PATH) or a Hugging Face tokenizer name or local directory.

    Raises:
        ExportError: ``char:`` without a readable corpus file.
        DataError: the HF tokenizer cannot be loaded (from :mod:`llmnas.data.tokenizers`).
    """
    from llmnas.data import tokenizers

    if spec == "byte":
        return tokenizers.byte_tokenizer()
    if spec.startswith("char:"):
        path = Path(spec.removeprefix("char:"))
        if not path.is_file():
            raise ExportError(f"--tokenizer {spec}: corpus file {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ExportError(f"--tokenizer {spec}: cannot read {path} as UTF-8 text ({e})") from None
        return tokenizers.char_tokenizer(text)
    if spec in ("", "char"):
        raise ExportError(f"--tokenizer {spec!r} is not valid: use {SPEC_HELP}")
    return tokenizers.hf_tokenizer(spec)


def as_hf_tokenizer(tokenizer: Any) -> Any:
    """The transformers tokenizer inside an llmnas ``TextTokenizer`` (or ``tokenizer`` itself)."""
    return getattr(tokenizer, "hf", tokenizer)
