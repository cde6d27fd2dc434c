"""prepare_data: nanoGPT's split, metadata for bits per byte, the token cache, and the error cases."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from llmnas.data import DataConfig, DataMeta, default_cache_dir, prepare_data
from llmnas.data.cache import load_entry, save_entry
from llmnas.errors import DataError
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def shakespeare_path() -> str:
    return str(shared_data("text/tinyshakespeare.txt"))


def test_shakespeare_char_matches_nanogpt(shakespeare_path, tmp_path):
    data = prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64, cache_dir=str(tmp_path)))
    assert data.vocab_size == 65
    assert (len(data.train), len(data.val)) == (1_003_854, 111_540)
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    text = Path(shakespeare_path).read_text(encoding="utf-8")
    assert data.tokenizer.decode(data.train) + data.tokenizer.decode(data.val) == text
    m = data.meta
    assert (m.n_train_tokens, m.n_val_tokens, m.val_chars, m.val_bytes) == (1_003_854, 111_540, 111_540, 111_540)
    assert m.corpus_chars == m.corpus_bytes == 1_115_394
    assert m.python_version is None and m.tokenizer == "char" and m.split == "tail"
    assert m.bits_per_char(1.0) == pytest.approx(1 / math.log(2))
    assert json.loads(json.dumps(m.to_dict())) == m.to_dict()


def test_byte_level_split_and_counts(tmp_path):
    text = "héllo wörld\n" * 1000  # 14 bytes, 12 characters per line
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    data = prepare_data(DataConfig(source=str(tmp_path / "a.txt"), block_size=8, cache_dir=str(tmp_path / "c")))
    n = len(text.encode())
    assert data.vocab_size == 257 and len(data.train) == int(n * 0.9) and len(data.train) + len(data.val) == n
    assert bytes(data.train.astype(np.uint8)) + bytes(data.val.astype(np.uint8)) == text.encode()
    m = data.meta
    assert m.val_bytes == len(data.val) and m.train_chars + m.val_chars == len(text)
    assert m.bits_per_byte(2.0) == pytest.approx(2.0 / math.log(2))  # one token per byte


def test_head_split_puts_validation_first(shakespeare_path, tmp_path):
    tail = prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64, cache_dir=str(tmp_path)))
    head = prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64, split="head",
                                   cache_dir=str(tmp_path)))
    assert (len(head.train), len(head.val)) == (1_003_854, 111_540)
    joined = np.concatenate([tail.train, tail.val])
    assert np.array_equal(head.val, joined[:111_540]) and np.array_equal(head.train, joined[111_540:])
    assert head.meta.cache_key != tail.meta.cache_key


def test_holdout_carves_the_search_validation_from_the_training_part(shakespeare_path, tmp_path):
    full = prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64, cache_dir=str(tmp_path)))
    carved = prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64, holdout=0.1,
                                     cache_dir=str(tmp_path)))
    assert not carved.from_cache and carved.meta.cache_key != full.meta.cache_key
    # int(1,003,854 * 0.9) = 903,468 train; the rest of nanoGPT's training split validates
    assert (len(carved.train), len(carved.val)) == (903_468, 100_386)
    assert np.array_equal(carved.train, full.train[:903_468]) and np.array_equal(carved.val, full.train[903_468:])
    m = carved.meta
    assert m.holdout == 0.1 and (m.n_train_tokens, m.n_val_tokens, m.val_chars) == (903_468, 100_386, 100_386)
    assert m.corpus_chars == 1_115_394 and carved.vocab_size == full.vocab_size == 65
    again = prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64, holdout=0.1,
                                    cache_dir=str(tmp_path)))
    assert again.from_cache and again.meta == m and np.array_equal(again.val, carved.val)
    assert prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64,
                                   cache_dir=str(tmp_path))).meta.cache_key == full.meta.cache_key


def test_holdout_at_byte_level_and_with_the_head_split(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000))
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    kw = {"source": str(tmp_path / "a.txt"), "block_size": 8, "cache_dir": str(tmp_path / "c")}
    tail = prepare_data(DataConfig(**kw, holdout=0.25))
    assert (len(tail.train), len(tail.val)) == (675, 225)  # 900 train bytes, the last quarter validates
    assert bytes(tail.val.astype(np.uint8)) == text[675:900].encode()
    head = prepare_data(DataConfig(**kw, split="head", holdout=0.25))  # training part is text[100:]
    assert bytes(head.train.astype(np.uint8)) == text[100:775].encode()
    assert bytes(head.val.astype(np.uint8)) == text[775:].encode()


def test_holdout_errors_name_the_key(tmp_path):
    for bad in (0, 1, 1.5, -0.1, True, "0.1"):
        with pytest.raises(DataError, match=rf"holdout={bad!r}: must be null or a number strictly between 0 and 1"):
            DataConfig(source="stdlib", block_size=8, holdout=bad)
    with pytest.raises(DataError, match=r"recipe.yaml: data: .*holdout=2: must be null"):
        DataConfig.from_dict({"source": "stdlib", "block_size": 8, "holdout": 2}, where="recipe.yaml: data")
    (tmp_path / "a.txt").write_text("x" * 1000, encoding="utf-8")
    with pytest.raises(DataError, match=r"validation split .* has 9 tokens.* different holdout \(now 0.01"):
        prepare_data(DataConfig(source=str(tmp_path / "a.txt"), block_size=64, holdout=0.01,
                                cache_dir=str(tmp_path)))


def test_stdlib_default_corpus_records_version_and_hash(tmp_path):
    cfg = DataConfig(source="stdlib", block_size=128, max_bytes=200_000, cache_dir=str(tmp_path))
    data = prepare_data(cfg)
    m = data.meta
    assert m.source.startswith("Python ") and "standard-library source code" in m.source
    assert m.python_version and m.source_info["n_files"] > 1 and len(m.corpus_sha256) == 64
    assert m.corpus_bytes == 200_000 and m.n_train_tokens + m.n_val_tokens == 200_000


def test_second_load_reads_the_cache(shakespeare_path, tmp_path):
    cfg = DataConfig(source=shakespeare_path, tokenizer="char", block_size=64, cache_dir=str(tmp_path))
    first = prepare_data(cfg)
    assert not first.from_cache
    entry = tmp_path / first.meta.cache_key
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "train.npy", "val.npy"]
    stamp = (entry / "train.npy").stat().st_mtime_ns
    second = prepare_data(cfg)
    assert second.from_cache and (entry / "train.npy").stat().st_mtime_ns == stamp
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert second.meta == first.meta and second.tokenizer.chars == first.tokenizer.chars
    # a different block size reuses the tokens; a different tokenizer or corpus does not
    assert prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=32,
                                   cache_dir=str(tmp_path))).from_cache
    assert not prepare_data(DataConfig(source=shakespeare_path, block_size=64, cache_dir=str(tmp_path))).from_cache
    assert not prepare_data(DataConfig(source=shakespeare_path, tokenizer="char", block_size=64,
                                       cache_dir=str(tmp_path), use_cache=False)).from_cache


def test_changed_corpus_is_retokenised(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("abcdefgh" * 100, encoding="utf-8")
    cfg = DataConfig(source=str(path), block_size=8, cache_dir=str(tmp_path / "c"))
    first = prepare_data(cfg)
    path.write_text("abcdefgX" * 100, encoding="utf-8")
    again = prepare_data(cfg)
    assert not again.from_cache and again.meta.corpus_sha256 != first.meta.corpus_sha256


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMNAS_CACHE", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "llmnas" / "tokens"
    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tokens"
    (tmp_path / "a.txt").write_text("x" * 100, encoding="utf-8")
    data = prepare_data(DataConfig(source=str(tmp_path / "a.txt"), block_size=4))
    assert (tmp_path / "tokens" / data.meta.cache_key / "meta.json").is_file()


def test_concurrent_writers_leave_one_complete_entry(tmp_path):
    arrays = [(np.arange(1000, dtype=np.uint16) + i, np.arange(10, dtype=np.uint16)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda a: save_entry(tmp_path, "k", a[0], a[1], {"writer": int(a[0][0])}), arrays))
    train, val, meta = load_entry(tmp_path, "k")
    assert np.array_equal(train, np.arange(1000) + meta["writer"])  # one writer's arrays, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary folders left


def test_unreadable_entry_is_replaced(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "meta.json").write_text("{", encoding="utf-8")
    assert load_entry(tmp_path, "k") is None
    save_entry(tmp_path, "k", np.arange(5), np.arange(3), {"ok": True})
    assert load_entry(tmp_path, "k")[2] == {"ok": True}


def test_too_small_corpus_and_split_are_errors(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 50, encoding="utf-8")
    with pytest.raises(DataError, match="has 50 tokens, smaller than one block: block_size=64"):
        prepare_data(DataConfig(source=str(tmp_path / "a.txt"), block_size=64, cache_dir=str(tmp_path)))
    (tmp_path / "b.txt").write_text("x" * 200, encoding="utf-8")
    with pytest.raises(DataError, match="validation split of text file .*b.txt has 20 tokens, fewer than one block"):
        prepare_data(DataConfig(source=str(tmp_path / "b.txt"), block_size=64, cache_dir=str(tmp_path)))


def test_config_validation_names_the_key():
    with pytest.raises(DataError, match="val_fraction=1.5: must be a number strictly between 0 and 1"):
        DataConfig(source="stdlib", block_size=64, val_fraction=1.5)
    with pytest.raises(DataError, match=r"split='middle': must be one of \['tail', 'head'\]"):
        DataConfig(source="stdlib", block_size=64, split="middle")
    with pytest.raises(DataError, match="block_size=0: must be a positive integer"):
        DataConfig(source="stdlib", block_size=0)
    with pytest.raises(DataError, match=r"recipe.yaml: data: unknown key\(s\) \['blocksize'\]"):
        DataConfig.from_dict({"source": "stdlib", "blocksize": 64}, where="recipe.yaml: data")
    with pytest.raises(DataError, match=r"missing required key\(s\) \['block_size'\]"):
        DataConfig.from_dict({"source": "stdlib"})
    cfg = DataConfig.from_dict({"source": "hf:text", "block_size": 64, "data_files": ["a.txt", "b.txt"]})
    assert cfg.data_files == ("a.txt", "b.txt") and DataConfig.from_dict(cfg.to_dict()) == cfg
    assert DataMeta.from_dict({**_meta_dict(), "unknown_future_key": 1}).vocab_size == 65


def _meta_dict() -> dict:
    return dict(source="s", source_spec="s", corpus_sha256="0" * 64, corpus_bytes=1, corpus_chars=1,
                tokenizer="char", tokenizer_fingerprint="f", vocab_size=65, split="tail", val_fraction=0.1,
                n_train_tokens=1, n_val_tokens=1, train_bytes=1, train_chars=1, val_bytes=1, val_chars=1)


def test_hf_tokenizer_directory_as_the_tokenizer(shakespeare_path, tmp_path):
    from llmnas.data import byte_tokenizer

    byte_tokenizer().save_pretrained(str(tmp_path / "tok"))
    data = prepare_data(DataConfig(source=shakespeare_path, tokenizer=str(tmp_path / "tok"), block_size=64,
                                   cache_dir=str(tmp_path / "c"), max_bytes=100_000))
    assert data.tokenizer.kind == "hf" and data.vocab_size == 257
    assert (len(data.train), len(data.val)) == (90_000, 10_000)
    assert data.tokenizer.decode(data.val) == Path(shakespeare_path).read_text(encoding="utf-8")[90_000:100_000]


OFFLINE = textwrap.dedent("""
    import sys
    from llmnas.data import DataConfig, prepare_data
    from llmnas.errors import DataError
    for kw in ({"source": "stdlib", "tokenizer": "no-such-org/no-such-tokenizer"},
               {"source": "hf:no-such-org/no-such-dataset"}):
        try:
            prepare_data(DataConfig(block_size=8, max_bytes=1000, cache_dir=sys.argv[1], **kw))
        except DataError as e:
            print("DataError:", str(e).replace("\\n", " "))
""")


def test_names_that_need_the_network_fail_clearly_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", OFFLINE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DataError:")]
    assert len(lines) == 2, proc.stdout
    assert "'no-such-org/no-such-tokenizer'" in lines[0] and "must be online" in lines[0]
    assert "local path" in lines[0]
    assert "'no-such-org/no-such-dataset'" in lines[1] and "online" in lines[1] and "local" in lines[1]


def test_shakespeare_recipe_selects_on_its_holdout(shakespeare_path, tmp_path):
    from llmnas.recipe import load_recipe

    recipe = load_recipe("shakespeare_char", [f"data.source={shakespeare_path}", f"data.cache_dir={tmp_path}"])
    assert recipe.data.holdout == 0.1  # the search never sees nanoGPT's validation split
    data = prepare_data(recipe.data)
    assert (len(data.train), len(data.val)) == (903_468, 100_386)
