"""Architectures as data and search spaces declared in YAML.

``load_space(path)`` reads a YAML space of any kind (``kind: transformer``, the default, or
``kind: nasbench201``); every malformed file gives one :class:`~llmnas.errors.SpaceError` that names
the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmnas.errors import SpaceError
from llmnas.space.arch import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN, ParamCounts
from llmnas.space.base import CategoricalSpace
from llmnas.space.transformer import Constraints, TransformerSpace

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
KINDS = ("transformer", "nasbench201")

__all__ = [
    "Architecture",
    "AttentionSpec",
    "BlockSpec",
    "CategoricalSpace",
    "Constraints",
    "DenseFFN",
    "MoEFFN",
    "ParamCounts",
    "TransformerSpace",
    "load_space",
    "read_yaml",
    "resolve_space_path",
]


def read_yaml(path: Path, error: type[Exception] = SpaceError) -> Any:
    """Parse a YAML file; a missing file or a syntax error becomes ``error`` naming file and line."""
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(f"{path}: not valid YAML{where}: {problem}") from None


def resolve_space_path(name: str | Path) -> Path:
    """A path as given, or the name of a shipped space (``tiny`` -> ``search_spaces/tiny.yaml``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(name):
        return path
    return SPACES_DIR / f"{name}.yaml"


def load_space(path: str | Path) -> CategoricalSpace:
    """Load and validate a search space from a YAML file (or the name of a shipped space)."""
    path = resolve_space_path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    kind = data.get("kind", "transformer")
    if kind == "transformer":
        return TransformerSpace.from_config(data, str(path))
    if kind == "nasbench201":
        from llmnas.space.nb201 import NB201Space

        return NB201Space.from_config(data, str(path))
    raise SpaceError(f"{path}: kind: {kind!r} is not a known space kind (allowed: {', '.join(KINDS)})")
