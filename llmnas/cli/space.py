"""``llmnas space validate|show|sample``: check, describe and sample YAML search spaces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmnas.errors import OutputError, SpaceError, blocking_file
from llmnas.space import TransformerSpace, load_space
from llmnas.space.feasibility import explain


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="validate, show or sample a YAML search space")
    cmds = p.add_subparsers(dest="space_command", required=True, metavar="ACTION")

    v = cmds.add_parser(
        "validate",
        help="check a space file and that some architecture meets its constraints (exit 0, or one clear error "
        "and exit 2)",
    )
    v.add_argument("file", help="YAML space file, or the name of a shipped space (tiny, small, moe, ...)")
    v.set_defaults(func=validate)

    s = cmds.add_parser("show", help="print the choices of every decision and the size of the space")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print the description as JSON")
    s.set_defaults(func=show)

    m = cmds.add_parser("sample", help="sample one architecture (meeting the space's constraints)")
    m.add_argument("file")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, help="write the architecture JSON here (default: print it)")
    m.set_defaults(func=sample)


def validate(args: argparse.Namespace) -> int:
    space = load_space(args.file)
    witness = space.check_feasible()
    met = f"; constraints met, e.g. by {witness.summary()}" if witness is not None else ""
    print(f"{args.file}: ok ({space.name}: {len(space.choices())} decisions, {space.size():.3g} candidates{met})")
    return 0


def show(args: argparse.Namespace) -> int:
    space = load_space(args.file)
    info = space.describe()
    info.setdefault("size", space.size())
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"space {space.name}" + (f": {info.get('description')}" if info.get("description") else ""))
    if isinstance(space, TransformerSpace):
        print(f"  vocab_size {space.vocab_size}, max_seq_len {space.max_seq_len}, "
              f"up to {space.max_layers} layers")
        _table("global", info["global"])
        _table(
            "per layer" + (f" (uniform across layers: {', '.join(space.uniform)})" if space.uniform else ""),
            info["layer"],
        )
        if info["constraints"]:
            print("  constraints: " + ", ".join(f"{k}={v:,}" for k, v in info["constraints"].items()))
            _feasibility(space)
    else:
        _table("decisions", info["decisions"])
    print(
        f"  {len(space.choices())} Optuna parameters; {info['size']:,} distinct candidates "
        f"({info['size']:.3g}) before constraints"
    )
    return 0


def _table(title: str, rows: dict[str, list]) -> None:
    print(f"  {title}:")
    width = max(map(len, rows), default=0)
    for key, values in rows.items():
        print(f"    {key:<{width}}  {', '.join(map(str, values))}")


def _feasibility(space: TransformerSpace) -> None:
    """The range of each limited quantity, and whether some architecture meets all the limits."""
    result = space.feasibility()
    for name in dict.fromkeys(q for q, _, _ in space.constraints.limits()):
        lo, hi = result.ranges[name]
        print(f"    {name} over the space: {lo:,}..{hi:,}")
    if result.witness is None:
        print(f"  feasible: no; {explain(space, result, space.name).args[0].split(': constraints: ', 1)[-1]}")
    else:
        print(f"  feasible: yes, e.g. {result.witness.summary()}")


def sample(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise SpaceError(f"--seed {args.seed}: must be a non-negative integer")
    if args.out is not None:
        _check_out(args.out)
    space = load_space(args.file)
    space.check_feasible()
    candidate = space.sample(args.seed)
    if not hasattr(candidate, "to_json"):
        if args.out is not None:
            raise SpaceError(f"--out {args.out}: space {space.name!r} has no JSON form; leave --out out")
        print(candidate)
        return 0
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        candidate.save(args.out)
        print(f"wrote {args.out}: {candidate.summary()}")
    else:
        print(candidate.to_json(indent=2))
    return 0


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before anything is created."""
    blocker = blocking_file(out)
    if blocker is not None:
        raise OutputError(f"--out {out}: cannot be created, {blocker} is a file, not a folder")
    if out.is_dir():
        raise OutputError(f"--out {out}: is a folder; give a file name (e.g. {out / 'arch.json'})")
