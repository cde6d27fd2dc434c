"""Tokenizers: exact round trips on real text, ids equal to the HF tokenizers', export to a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, pipeline

from llmnas.data.sources import stdlib_corpus
from llmnas.data.tokenizers import EOT, _newline_chunks, byte_tokenizer, char_tokenizer, hf_tokenizer, load_tokenizer
from llmnas.errors import DataError
from tests.conftest import shared_data

ODD = "tab\there, CRLF\r\nnon-ASCII: héllo wörld — 日本語 🙂 \x00 nul, trailing spaces   \n\n"


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return shared_data("text/tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def stdlib_text() -> str:
    return stdlib_corpus().text


def hf_ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_byte_tokenizer_is_bytes_plus_eos():
    tok = byte_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == 257
    assert tok.eos_token == EOT and tok.eos_token_id == 256
    assert hf_ids(tok, ODD) == list(ODD.encode("utf-8"))
    assert tok.decode(list(ODD.encode("utf-8"))) == ODD
    assert tok.decode([104, 105, 256]) == "hi" + EOT


def test_byte_round_trip_and_fast_path_equals_hf(shakespeare, stdlib_text):
    tok = load_tokenizer("byte")
    for text in (shakespeare, stdlib_text, ODD):
        ids = tok.encode(text)
        assert ids.dtype == np.uint16
        assert np.array_equal(ids, np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
        assert tok.decode(ids) == text
    # the HF tokenizer (Rust path) agrees with the numpy path, on real text and a literal <|endoftext|>
    sample = stdlib_text[:100_000] + ODD + EOT + shakespeare[:100_000]
    assert hf_ids(tok.hf, sample) == tok.encode(sample).tolist()
    assert tok.hf.decode(tok.encode(sample).tolist()) == sample


def test_char_tokenizer_on_shakespeare(shakespeare):
    tok = load_tokenizer("char", shakespeare)
    assert tok.vocab_size == 65
    assert tok.chars == "".join(sorted(set(shakespeare)))
    assert tok.hf.get_vocab() == {c: i for i, c in enumerate(sorted(set(shakespeare)))}
    assert tok.hf.eos_token is None and tok.hf.all_special_tokens == []
    ids = tok.encode(shakespeare)
    assert ids.tolist() == [tok.chars.index(c) for c in shakespeare[:2000]] + ids[2000:].tolist()
    assert tok.decode(ids) == shakespeare
    sample = shakespeare[:100_000]
    assert hf_ids(tok.hf, sample) == tok.encode(sample).tolist()
    assert tok.hf.decode(tok.encode(sample).tolist()) == sample  # no spaces inserted


def test_char_round_trip_on_stdlib(stdlib_text):
    tok = load_tokenizer("char", stdlib_text)
    ids = tok.encode(stdlib_text)
    assert tok.decode(ids) == stdlib_text
    assert hf_ids(tok.hf, stdlib_text[:50_000]) == ids[:50_000].tolist()


def test_char_unknown_character_is_an_error(shakespeare):
    tok = load_tokenizer("char", shakespeare)
    with pytest.raises(DataError, match=r"outside its 65-character vocabulary: '\\t', 'é'"):
        tok.encode("to be\tor é")
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):  # the saved HF tokenizer refuses too
        tok.hf("é", add_special_tokens=False)
    with pytest.raises(DataError, match="needs the corpus"):
        load_tokenizer("char")
    with pytest.raises(DataError, match="empty corpus"):
        char_tokenizer("")


def test_encoding_is_vectorised_not_a_python_loop(shakespeare):
    """Encoding a megabyte costs less than one Python-level dictionary look-up per character: a ratio of
    two timings on the same machine (best of three each), so a loaded machine slows both."""
    table = {c: i for i, c in enumerate(sorted(set(shakespeare)))}

    def best_of_three(fn) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    loop = best_of_three(lambda: [table[c] for c in shakespeare])
    for tok in (load_tokenizer("byte"), load_tokenizer("char", shakespeare)):
        assert best_of_three(lambda tok=tok: tok.encode(shakespeare)) < loop, tok.spec


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, shakespeare) -> str:
    """A small byte-level BPE (GPT-2 pre-tokenisation) trained on Shakespeare, saved as an HF tokenizer."""
    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rust.train_from_iterator([shakespeare[:50_000]], trainer=trainer)
    directory = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=rust, eos_token=EOT).save_pretrained(str(directory))
    return str(directory)


def test_hf_tokenizer_from_local_directory(bpe_dir, shakespeare):
    tok = load_tokenizer(bpe_dir)
    assert tok.kind == "hf" and tok.vocab_size == 320
    text = shakespeare[:300_000]
    ids = tok.encode(text, chunk_chars=20_000)  # encoded in ~15 pieces, each cut at a newline
    assert ids.tolist() == tok.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert len(ids) < 0.75 * len(text)  # merges were learned and are used


def test_newline_chunks_cut_after_a_newline_before_text(stdlib_text):
    text = stdlib_text[:300_000]
    pieces = _newline_chunks(text, size=20_000)
    assert "".join(pieces) == text
    assert len(pieces) > 5
    for piece, after in zip(pieces, pieces[1:], strict=False):
        assert piece.endswith("\n") and not after[0].isspace()


def test_hf_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        hf_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="could not be loaded"):
        hf_tokenizer(str(tmp_path))  # a directory without tokenizer files
    with pytest.raises(DataError, match="must be online.*local path|local path.*online") as err:
        hf_tokenizer("no-such-org/no-such-tokenizer", local_files_only=True)
    assert "no-such-org/no-such-tokenizer" in str(err.value)


def test_a_corrupt_local_tokenizer_is_a_data_error(tmp_path):
    byte_tokenizer().save_pretrained(tmp_path / "tok")
    with pytest.raises(DataError, match="is a file; give the directory"):
        hf_tokenizer(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 5}}')
    with pytest.raises(DataError, match=r"tokenizer directory '.*tok' could not be loaded \(\w+"):
        hf_tokenizer(str(tmp_path / "tok"))


FRESH = textwrap.dedent("""
    import json, sys
    from transformers import AutoTokenizer
    out = {}
    text = sys.argv[2]
    for name, d in json.loads(sys.argv[1]).items():
        tok = AutoTokenizer.from_pretrained(d)
        ids = tok(text)["input_ids"]
        out[name] = {"class": type(tok).__name__, "len": len(tok), "eos": tok.eos_token_id, "ids": ids,
                     "decoded": tok.decode(ids)}
    out["llmnas_imported"] = any(m == "llmnas" or m.startswith("llmnas.") for m in sys.modules)
    print(json.dumps(out))
""")


def test_saved_tokenizers_load_in_a_fresh_process_without_llmnas(tmp_path, shakespeare):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    byte, char = load_tokenizer("byte"), load_tokenizer("char", shakespeare)
    byte.save_pretrained(tmp_path / "byte")
    char.save_pretrained(tmp_path / "char")
    dirs = {"byte": str(tmp_path / "byte"), "char": str(tmp_path / "char")}
    proc = subprocess.run([sys.executable, "-c", FRESH, json.dumps(dirs), text], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["llmnas_imported"] is False
    assert out["byte"]["len"] == 257 and out["byte"]["eos"] == 256
    assert out["char"]["len"] == 65 and out["char"]["eos"] is None
    for name, tok in (("byte", byte), ("char", char)):
        config = json.loads((tmp_path / name / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # a name transformers 4 and 5 both load
        assert out[name]["class"] == type(tok.hf).__name__
        assert out[name]["ids"] == tok.encode(text).tolist()  # no special tokens added by default
        assert out[name]["decoded"] == text


@pytest.mark.parametrize("spec", ["byte", "char"])
def test_saved_tokenizer_drives_a_text_generation_pipeline(tmp_path, shakespeare, spec):
    load_tokenizer(spec, shakespeare).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    generate = pipeline("text-generation", model=GPT2LMHeadModel(config), tokenizer=tok, device="cpu")
    out = generate("First Citizen:", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert out.startswith("First Citizen:") and len(out) > len("First Citizen:")
