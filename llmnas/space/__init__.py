"""Architectures as data and search spaces declared in YAML.

``load_space(path)`` reads a YAML space of any kind (``kind: transformer``, the default, or
``kind: nasbench201``); every malformed file gives one :class:`~llmnas.errors.SpaceError` that names
the file and the key.
"""

from __future__ import annotations

from pathlib import Path

from llmnas.errors import SpaceError
from llmnas.space.arch import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN, ParamCounts
from llmnas.space.base import CategoricalSpace
from llmnas.space.transformer import Constraints, TransformerSpace
from llmnas.space.yaml_io import read_yaml, read_yaml_mapping

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
    "read_yaml_mapping",
    "resolve_space_path",
]


def resolve_space_path(name: str | Path) -> Path:
    """A path as given, or the name of a shipped space (``tiny`` -> ``search_spaces/tiny.yaml``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(name):
        return path
    return SPACES_DIR / f"{name}.yaml"


def load_space(path: str | Path) -> CategoricalSpace:
    """Load and validate a search space from a YAML file (or the name of a shipped space)."""
    name, path = path, resolve_space_path(path)
    if path.parent == SPACES_DIR and not path.exists() and str(name) == path.stem:
        shipped = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise SpaceError(f"space {name!r}: no such file, and not a shipped space (shipped: {shipped})")
    data = read_yaml_mapping(path)
    kind = data.get("kind", "transformer")
    if kind == "transformer":
        return TransformerSpace.from_config(data, str(path))
    if kind == "nasbench201":
        from llmnas.space.nb201 import NB201Space

        return NB201Space.from_config(data, str(path))
    raise SpaceError(f"{path}: kind: {kind!r} is not a known space kind (allowed: {', '.join(KINDS)})")
