"""User-facing errors.

Every error that a user can cause with input (a YAML space or recipe, a CLI flag, a data path, an
architecture file) is raised as a subclass of :class:`LlmnasError` with a message that names the
file, key or value and what is allowed. The CLI prints the message alone (no traceback) and exits
with status 2.
"""

from __future__ import annotations

from pathlib import Path


class LlmnasError(Exception):
    """Base class of errors caused by user input; the message is meant to be shown as is."""


class ArchitectureError(LlmnasError, ValueError):
    """An architecture violates one or more rules; ``problems`` lists each one."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"invalid architecture{f' in {source}' if source else ''}"
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class SpaceError(LlmnasError, ValueError):
    """A search-space file is malformed."""


class RecipeError(LlmnasError, ValueError):
    """A recipe file or a ``--set`` override is malformed."""


class DataError(LlmnasError):
    """A data source is missing, empty or too small."""


class ExportError(LlmnasError):
    """Export failed (e.g. logits parity was not reached)."""


class OutputError(LlmnasError):
    """An output path cannot be written: a parent folder is a file, or the path is of the wrong kind."""


def blocking_file(path: str | Path) -> Path | None:
    """The first parent of ``path`` that exists but is not a folder (so ``path`` cannot be created), if any."""
    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None
