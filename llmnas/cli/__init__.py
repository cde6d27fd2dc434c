"""The ``llmnas`` command line: one sub-module per command group, listed here explicitly."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys

from llmnas import interrupt
from llmnas.errors import LlmnasError

# Each module defines ``register(subparsers)``; the parser it adds sets ``func`` to a function that
# takes the parsed arguments and returns an exit status.
COMMAND_MODULES = ("space", "export", "search", "supernet", "bench", "hw")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmnas", description="Neural architecture search for transformer language models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"llmnas.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna

    # The command prints its own lines per trial; Optuna's INFO line per trial would repeat them. (A
    # program that imports llmnas keeps its own logging settings.)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    previous = signal.getsignal(signal.SIGINT)
    interrupt.install()  # a Ctrl-C that lands in a garbage-collection callback is not lost
    try:
        return int(args.func(args) or 0)
    except LlmnasError as e:
        print(f"llmnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmnas: interrupted", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(ValueError, TypeError):  # not the main thread / handler not from Python
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
