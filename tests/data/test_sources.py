"""Corpus sources: files, folders, the stdlib corpus, datasets by name (local builder) and saved datasets."""

from __future__ import annotations

import hashlib
import platform

import datasets
import pytest

from llmnas.data.sources import (
    STDLIB_EXCLUDED_DIRS,
    load_corpus,
    stdlib_corpus,
    stdlib_files,
    stdlib_root,
)
from llmnas.errors import DataError
from tests.conftest import shared_data


def test_text_file_is_read_exactly(tmp_path):
    raw = "line one\r\nline two\ttab\nnon-ASCII é 日本\n".encode()
    (tmp_path / "a.txt").write_bytes(raw)
    corpus = load_corpus(str(tmp_path / "a.txt"))
    assert corpus.text.encode() == raw  # no newline translation
    assert corpus.sha256 == hashlib.sha256(raw).hexdigest()
    assert corpus.info["kind"] == "file"


def test_shakespeare_file():
    path = shared_data("text/tinyshakespeare.txt")
    corpus = load_corpus(str(path))
    assert len(corpus.text) == 1_115_394
    assert len(set(corpus.text)) == 65
    assert str(path) in corpus.description


def test_max_bytes_keeps_whole_characters(tmp_path):
    (tmp_path / "a.txt").write_text("abé日x", encoding="utf-8")  # bytes: a b é(2) 日(3) x
    assert load_corpus(str(tmp_path / "a.txt"), max_bytes=4).text == "abé"
    assert load_corpus(str(tmp_path / "a.txt"), max_bytes=6).text == "abé"
    assert load_corpus(str(tmp_path / "a.txt"), max_bytes=7).text == "abé日"


def test_folder_is_recursive_sorted_and_filtered(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("bz", encoding="utf-8")
    (tmp_path / "b" / "a.txt").write_text("ba", encoding="utf-8")
    (tmp_path / "c.txt").write_text("c", encoding="utf-8")
    (tmp_path / "skip.md").write_text("markdown", encoding="utf-8")
    corpus = load_corpus(str(tmp_path))
    assert corpus.text == "ba\nbz\nc"
    assert corpus.info["n_files"] == 3
    assert load_corpus(str(tmp_path), glob="*.txt").text == "c"
    assert load_corpus(str(tmp_path), glob="**/*", separator="|").text == "ba|bz|c|markdown"


def test_source_errors(tmp_path):
    with pytest.raises(DataError, match="'.*nope' does not exist.*text file, a folder"):
        load_corpus(str(tmp_path / "nope"))
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="corpus is empty: text file .*empty.txt"):
        load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"folder .*docs has no files matching '\*\*/\*.txt'"):
        load_corpus(str(tmp_path / "docs"))
    (tmp_path / "docs" / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="bin.txt is not UTF-8 text"):
        load_corpus(str(tmp_path / "docs"))


def test_stdlib_corpus_is_deterministic_and_honestly_named():
    files = stdlib_files()
    root = stdlib_root()
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel)
    assert "json/decoder.py" in rel and "os.py" in rel
    assert not any(set(r.split("/")[:-1]) & STDLIB_EXCLUDED_DIRS for r in rel)
    assert not any(r.startswith("_sysconfigdata") for r in rel)
    a, b = stdlib_corpus(), stdlib_corpus()
    assert a.sha256 == b.sha256 and a.text == b.text
    version = platform.python_version()
    assert a.description.startswith(f"Python {version} standard-library source code ({len(files)} files")
    assert a.info["python_version"] == version
    assert a.info["n_files"] == len(files) and a.info["skipped_non_utf8"] == []
    assert a.info["n_bytes"] == len(a.text.encode()) > 1_000_000
    assert a.text.startswith((root / rel[0]).read_text(encoding="utf-8"))


def test_stdlib_size_cap():
    capped = stdlib_corpus(max_bytes=100_000)
    assert len(capped.text.encode()) == 100_000
    assert stdlib_corpus().text.startswith(capped.text)
    assert capped.info["n_files"] < 50 and "first 100,000 bytes" in capped.description


def test_datasets_by_name_through_the_text_builder(tmp_path):
    lines = ["First Citizen:", "Before we proceed any further, hear me speak.", "", "All:"]
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = load_corpus("hf:text", data_files=str(tmp_path / "a.txt"),
                         datasets_cache_dir=str(tmp_path / "hf_cache"))
    assert corpus.text == "\n".join(lines)
    assert corpus.info["kind"] == "hf_dataset" and corpus.info["n_rows"] == 4
    assert "datasets data set 'text'" in corpus.description


def test_saved_dataset_directory(tmp_path):
    ds = datasets.Dataset.from_dict({"id": [1, 2, 3], "content": ["alpha", "beta é", "gamma"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(str(tmp_path / "ds"), text_column="content", separator="\n\n")
    assert corpus.text == "alpha\n\nbeta é\n\ngamma"
    assert corpus.info["kind"] == "saved_dataset" and corpus.info["n_rows"] == 3
    with pytest.raises(DataError, match=r"no text column 'text'; its columns are \['id', 'content'\]"):
        load_corpus(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="column 'id' holds int values"):
        load_corpus(str(tmp_path / "ds"), text_column="id")

    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_corpus(str(tmp_path / "dd"), text_column="content", dataset_split="validation").text == "alpha"
    with pytest.raises(DataError, match=r"no split 'test'; its splits are \['train', 'validation'\]"):
        load_corpus(str(tmp_path / "dd"), text_column="content", dataset_split="test")


@pytest.mark.parametrize(
    ("damage", "cause"),
    [
        (lambda d: (d / "dataset_info.json").write_text("{bad"), "JSONDecodeError"),
        (lambda d: (d / "state.json").write_text("{}"), "KeyError"),
        (lambda d: [p.write_bytes(b"garbage") for p in d.glob("*.arrow")], "ArrowInvalid"),
    ],
)
def test_a_damaged_saved_dataset_is_a_data_error(tmp_path, damage, cause):
    datasets.Dataset.from_dict({"text": ["alpha", "beta"]}).save_to_disk(str(tmp_path / "ds"))
    damage(tmp_path / "ds")
    with pytest.raises(DataError, match=rf"saved datasets directory .*ds could not be loaded \({cause}"):
        load_corpus(str(tmp_path / "ds"))
