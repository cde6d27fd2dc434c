"""Tokenizers: byte-level, character-level and any Hugging Face tokenizer, behind one small wrapper.

Each tokenizer is a real ``transformers.PreTrainedTokenizerFast`` built with the ``tokenizers``
library, so ``tok.save_pretrained(DIR)`` followed by ``AutoTokenizer.from_pretrained(DIR)`` works in
a process that never imports llmnas, and ``pipeline("text-generation", ...)`` accepts it.

- :func:`byte_tokenizer`: ids 0..255 are the raw UTF-8 bytes, id 256 is ``<|endoftext|>`` (eos);
  vocabulary 257. Decoding is lossless for any text.
- :func:`char_tokenizer`: the distinct characters of a corpus sorted by code point, id = rank, no
  special tokens (tiny-shakespeare gives nanoGPT's 65 ids). A character outside the vocabulary is an
  error: :meth:`TextTokenizer.encode` raises :class:`~llmnas.errors.DataError` naming it, and the
  saved HF tokenizer raises ``Exception("WordLevel error: Missing [UNK] token ...")`` — never a
  silently dropped or substituted character.
- :func:`hf_tokenizer`: ``AutoTokenizer.from_pretrained(name_or_path)``.

:class:`TextTokenizer` wraps one of these with the spec it came from and a fast ``encode`` to a numpy
array: byte- and character-level encode with numpy lookups (tests check the ids equal the HF
tokenizer's), other tokenizers through the Rust backend in parallel ~1 MB chunks.

Example:
    >>> tok = load_tokenizer("byte")
    >>> tok.encode("hé").tolist()
    [104, 195, 169]
    >>> tok.decode(tok.encode("hé"))
    'hé'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as RustTokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llmnas.errors import DataError

EOT = "<|endoftext|>"
BYTE_VOCAB_SIZE = 257
TokenizerKind = Literal["byte", "char", "hf"]

# Encoding a corpus with a general HF tokenizer goes through the Rust backend in chunks of about this
# many characters, cut just after a newline that is followed by a non-space character.
CHUNK_CHARS = 1 << 20


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (ByteLevel's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer: id b (0..255) is byte b, id 256 is ``<|endoftext|>`` (eos).

    Built as a byte-level BPE with no merges, so every byte is its own token and the standard
    ``ByteLevel`` decoder restores the text exactly.
    """
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    vocab[EOT] = 256
    rust = RustTokenizer(models.BPE(vocab=vocab, merges=[]))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    rust.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=rust,
        eos_token=EOT,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def char_vocab(text: str) -> str:
    """The distinct characters of ``text`` sorted by code point, as one string (id = position)."""
    return "".join(sorted(set(text)))


def char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """Character-level tokenizer whose vocabulary is the distinct characters of ``text``.

    Ids are ranks in code-point order; there are no special tokens. Decoding concatenates the
    characters (no spaces inserted). Encoding a character outside the vocabulary raises an error.

    Raises:
        DataError: ``text`` is empty.
    """
    chars = char_vocab(text)
    if not chars:
        raise DataError("cannot build a character-level tokenizer from an empty corpus")
    vocab = {c: i for i, c in enumerate(chars)}
    # WordLevel (not BPE) so an unknown character is an error rather than silently dropped; its
    # unk_token is a multi-character string, so it can never be in this vocabulary.
    rust = RustTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    rust.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=rust,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def hf_tokenizer(name_or_path: str, *, local_files_only: bool = False) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name_or_path)`` with a clear error when it cannot be loaded.

    Args:
        name_or_path: a Hugging Face Hub name (needs the network, or the HF cache) or a local
            directory holding a saved tokenizer.
        local_files_only: do not try the network (fails fast on an offline machine).

    Raises:
        DataError: the tokenizer could not be loaded; the message says whether the path is missing
            or the machine must be online.
    """
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.exists():
        raise DataError(f"tokenizer path {name_or_path!r} does not exist")
    if looks_local and not path.is_dir():
        raise DataError(f"tokenizer path {name_or_path!r} is a file; give the directory holding tokenizer.json")
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if looks_local else name_or_path,
                                            local_files_only=local_files_only)
    except Exception as e:  # noqa: BLE001 - corrupt files raise anything (JSONDecodeError, KeyError, Exception)
        if looks_local:
            cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
            raise DataError(f"tokenizer directory {name_or_path!r} could not be loaded ({cause})") from e
        raise DataError(
            f"tokenizer {name_or_path!r} could not be loaded: it is not a local path, so it is downloaded "
            "from the Hugging Face Hub (unless already in the HF cache) and the machine must be online and "
            f"the name must exist; otherwise give the local path of a saved tokenizer directory. "
            f"Cause: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    if not tok.is_fast:
        raise DataError(f"tokenizer {name_or_path!r} has no fast (Rust) implementation")
    return tok


def _newline_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters, each cut just after a newline that is
    followed by a non-space character (a pre-token boundary for GPT-2/Llama-3 style tokenizers)."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while True:
            nl = text.find("\n", cut)
            if nl < 0 or nl + 1 >= len(text):
                cut = len(text)
                break
            if not text[nl + 1].isspace():
                cut = nl + 1
                break
            cut = nl + 1
        pieces.append(text[start:cut])
        start = cut
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


@dataclass(frozen=True, eq=False)
class TextTokenizer:
    """A tokenizer with the spec it came from and fast whole-corpus encoding.

    Attributes:
        spec: ``"byte"``, ``"char"`` or the HF name/path it was loaded from.
        kind: ``"byte"``, ``"char"`` or ``"hf"``; selects the fast encoding path.
        hf: the Hugging Face tokenizer; ``hf.save_pretrained(DIR)`` exports it.
    """

    spec: str
    kind: TokenizerKind
    hf: PreTrainedTokenizerBase

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(hf)``)."""
        return len(self.hf)

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @property
    def chars(self) -> str:
        """The character-level vocabulary (id = position); only for ``kind == "char"``."""
        vocab = self.hf.get_vocab()
        return "".join(sorted(vocab, key=vocab.__getitem__))

    def fingerprint(self) -> str:
        """SHA-256 of the backend's JSON form: identifies the tokenizer for the token cache."""
        return hashlib.sha256(self.hf.backend_tokenizer.to_str().encode()).hexdigest()

    def encode(self, text: str, *, chunk_chars: int = CHUNK_CHARS) -> np.ndarray:
        """Token ids of ``text`` as a 1-D array of :attr:`dtype`; no special tokens are added.

        A general HF tokenizer encodes ``text`` in pieces of about ``chunk_chars`` characters in
        parallel, each cut just after a newline followed by a non-space character. For GPT-2 /
        Llama-3 style pre-tokenisers that is a token boundary, so the ids equal one-shot encoding;
        a tokenizer that prefixes each input (SentencePiece's ``▁``) may differ at each cut.

        The text is treated as plain text: for the byte-level tokenizer a literal ``<|endoftext|>``
        in the text is encoded as its 13 bytes (the HF tokenizer does the same with
        ``split_special_tokens=True``).

        Raises:
            DataError: (character-level) the text holds characters outside the vocabulary.
        """
        if self.kind == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(self.dtype)
        if self.kind == "char":
            return self._encode_chars(text)
        pieces = _newline_chunks(text, chunk_chars)
        encodings = self.hf.backend_tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
        out = np.empty(sum(len(e.ids) for e in encodings), dtype=self.dtype)
        pos = 0
        for e in encodings:
            out[pos:pos + len(e.ids)] = e.ids
            pos += len(e.ids)
        return out

    def _encode_chars(self, text: str) -> np.ndarray:
        chars = self.chars
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(ord(chars[-1]) + 1, -1, dtype=np.int64)
        table[[ord(c) for c in chars]] = np.arange(len(chars))
        ids = table[np.minimum(points, len(table) - 1)]
        ids[points >= len(table)] = -1
        if (ids < 0).any():
            unknown = sorted({chr(p) for p in points[ids < 0][:100_000].tolist()})
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise DataError(
                f"character-level tokenizer: the text holds {int((ids < 0).sum())} character(s) outside "
                f"its {len(chars)}-character vocabulary: {shown}"
            )
        return ids.astype(self.dtype)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """The text of ``ids`` (byte-level: invalid UTF-8 becomes U+FFFD, as in the HF decoder)."""
        arr = np.asarray(ids)
        if self.kind == "byte" and (arr.size == 0 or int(arr.max()) < 256):
            return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        if self.kind == "char":
            return "".join(np.array(list(self.chars))[arr.astype(np.int64)].tolist())
        return self.hf.decode(arr.tolist(), clean_up_tokenization_spaces=False)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the HF tokenizer files into ``directory`` (``AutoTokenizer.from_pretrained`` loads them).

        transformers 5 records its fast-tokenizer class as ``TokenizersBackend``, a name transformers 4
        does not know; it is written as the alias ``PreTrainedTokenizerFast``, which both load.
        """
        self.hf.save_pretrained(str(directory))
        config_path = Path(directory) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(spec: str, corpus_text: str | None = None, *, local_files_only: bool = False) -> TextTokenizer:
    """The tokenizer a recipe names.

    Args:
        spec: ``"byte"`` (byte-level, 257 ids), ``"char"`` (character-level from ``corpus_text``),
            or a Hugging Face tokenizer name or local directory.
        corpus_text: the corpus whose characters make the ``"char"`` vocabulary.
        local_files_only: for HF names, do not try the network.

    Raises:
        DataError: ``"char"`` without a corpus, or an HF tokenizer that cannot be loaded.
    """
    if spec == "byte":
        return TextTokenizer("byte", "byte", byte_tokenizer())
    if spec == "char":
        if corpus_text is None:
            raise DataError('tokenizer "char" needs the corpus text to build its vocabulary')
        return TextTokenizer("char", "char", char_tokenizer(corpus_text))
    if not spec:
        raise DataError('tokenizer spec is empty: use "byte", "char" or a Hugging Face name or path')
    return TextTokenizer(spec, "hf", hf_tokenizer(spec, local_files_only=local_files_only))
