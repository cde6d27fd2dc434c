"""The YAML reader of recipes, spaces and ``--set`` values: YAML 1.2 numbers, repeated keys, unreadable files."""

from __future__ import annotations

import math

import pytest
import yaml

from llmnas.errors import RecipeError, SpaceError
from llmnas.space import load_space
from llmnas.space.yaml_io import load, parse_value, read_yaml, read_yaml_mapping


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e3", 1000.0), ("1e-3", 0.001), ("5E4", 50000.0), ("+1e3", 1000.0), ("-2.5e-1", -0.25), (".5e3", 500.0),
     ("1.5e3", 1500.0), ("1.0e+3", 1000.0), ("2.0e-3", 0.002), ("1_000.5", 1000.5), (".inf", math.inf)],
)
def test_exponent_forms_are_floats(text: str, value: float) -> None:
    got = load(text)
    assert isinstance(got, float) and got == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("30", 30), ("-7", -7), ("1_000", 1000), ("0x1f", 31), ("true", True), ("null", None), ("1e", "1e"),
     ("e3", "e3"), ("v1e3", "v1e3"), ("1.2.3", "1.2.3"), ("abc", "abc"), ("[1e3, 2]", [1000.0, 2])],
)
def test_integers_and_text_are_unchanged(text: str, value: object) -> None:
    got = load(text)
    assert got == value and type(got) is type(value)


def test_pyyaml_itself_is_left_alone() -> None:
    load("1e3")
    assert yaml.safe_load("1e3") == "1e3"


def test_parse_value_keeps_text_that_is_not_yaml() -> None:
    assert parse_value("a: b: c") == "a: b: c"
    assert parse_value("1e-3") == 0.001


def test_a_key_given_twice_is_an_error(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("train: {lr: 1}\nsearch: {}\ntrain: {lr: 2}\n")
    with pytest.raises(RecipeError, match=r"r.yaml: not valid YAML \(line 3, column 1\): key 'train' is given twice"):
        read_yaml(path, RecipeError)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: x\xff\n", r"not UTF-8 text \(byte 0xff at offset 7\)"),
        (b"\xff\xfe", r"not UTF-8 text \(byte 0xff at offset 0\)"),
        (b"", "the file is empty"),
        (b"# only a comment\n", "the file is empty"),
        (b"- a\n- b\n", "expected a mapping of keys at the top, got a list"),
        (b"just text\n", "expected a mapping of keys at the top, got a string"),
        (b"a: [1\n", r"not valid YAML \(line 2, column 1\)"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(SpaceError, match=f"bad.yaml: {message}"):
        read_yaml_mapping(path)


def test_directories_and_missing_files(tmp_path) -> None:
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(SpaceError, match="d.yaml: is a directory, not a YAML file"):
        load_space(tmp_path / "d.yaml")
    with pytest.raises(SpaceError, match="nope.yaml: file not found"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match=r"space 'tinyy': no such file, and not a shipped space \(shipped: .*tiny"):
        load_space("tinyy")


def test_spaces_read_exponent_numbers(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("vocab_size: 65\nmax_seq_len: 32\nd_model: [32]\nn_layers: [1]\nnorm_eps: [1e-6]\n"
                    "layer: {n_heads: [2]}\nconstraints: {max_params: 1e6}\n")
    space = load_space(path)
    assert space.global_choices["norm_eps"] == (1e-6,)
    assert space.constraints.max_params == 1_000_000
