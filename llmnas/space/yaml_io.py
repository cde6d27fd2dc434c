"""Reading the YAML that users write: recipes, search spaces and ``--set`` values.

PyYAML follows YAML 1.1, in which ``1e3``, ``1e-3`` and ``5E4`` are strings (only ``1.0e+3`` is a
float), so ``lr: 1e-3`` would be rejected as "must be float". :class:`Loader` is PyYAML's safe loader
with YAML 1.2's reading of numbers: a mantissa with or without a dot and an exponent with or without
a sign is a float; integers stay integers. It also refuses a key given twice in one mapping (PyYAML
keeps the last one silently).

:func:`read_yaml` turns every way a file can be unreadable (missing, a directory, not UTF-8, not
YAML, empty, not a mapping) into one error naming the file.

Example:
    >>> parse_value("1e-3"), parse_value("5E4"), parse_value("30"), parse_value("[a, b]")
    (0.001, 50000.0, 30, ['a', 'b'])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from llmnas.errors import SpaceError

FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.1's float forms (sexagesimal, .inf, .nan) plus YAML 1.2's: the exponent needs no dot before
# it and no sign. A plain integer ("30") does not match, so it still resolves as int.
FLOAT_RE = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats (``1e-3``) and no repeated keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _with_yaml12_floats(resolvers: dict[str, list]) -> dict[str, list]:
    """A copy of ``resolvers`` whose float pattern is :data:`FLOAT_RE` (PyYAML's own table is left alone)."""
    out = {ch: [(tag, FLOAT_RE if tag == FLOAT_TAG else rx) for tag, rx in lst] for ch, lst in resolvers.items()}
    for ch in "-+.0123456789":  # first characters a float may start with
        lst = out.setdefault(ch, [])
        if not any(tag == FLOAT_TAG for tag, _ in lst):
            lst.insert(0, (FLOAT_TAG, FLOAT_RE))
    return out


Loader.yaml_implicit_resolvers = _with_yaml12_floats(yaml.SafeLoader.yaml_implicit_resolvers)


def load(text: str) -> Any:
    """Parse YAML text with :class:`Loader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader


def parse_value(raw: str) -> Any:
    """A command-line value read as YAML (``1e-3``, ``[a, b]``, ``null``); text that is not YAML stays text."""
    try:
        return load(raw)
    except yaml.YAMLError:
        return raw


def yaml_type(value: Any) -> str:
    """How a YAML reader would name the kind of ``value``: mapping, list, string, number, ..."""
    if value is None:
        return "nothing (null)"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def read_yaml(path: Path, error: type[Exception] = SpaceError) -> Any:
    """Parse a YAML file; every reason it cannot be read becomes ``error`` naming the file.

    Raises:
        error: the file is missing, a directory, unreadable, not UTF-8, or not valid YAML (with the line).
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, not a YAML file")
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = f"byte 0x{raw[e.start]:02x} at offset {e.start}"
        raise error(f"{path}: not UTF-8 text ({bad}); save it as UTF-8") from None
    try:
        return load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(f"{path}: not valid YAML{where}: {problem}") from None


def read_yaml_mapping(path: Path, error: type[Exception] = SpaceError) -> dict[str, Any]:
    """:func:`read_yaml` for files whose top level must be a mapping of keys (recipes, spaces)."""
    data = read_yaml(path, error)
    if data is None:
        raise error(f"{path}: the file is empty (expected a mapping of keys)")
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of keys at the top, got {yaml_type(data)}")
    return data
