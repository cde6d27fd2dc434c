"""``llmnas supernet train|show``: train the weight-shared supernet a recipe describes, and inspect one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "supernet",
        help="train the weight-shared supernet of a recipe's space (then search with search.evaluator: supernet)",
    )
    cmds = p.add_subparsers(dest="supernet_command", required=True, metavar="SUBCOMMAND")
    t = cmds.add_parser(
        "train",
        help="train (or resume) the supernet with the recipe's supernet section",
        description="Train one supernet holding every architecture of the recipe's space: each step trains the "
        "largest, the smallest and random subnets (the sandwich rule) on the same batches. Runs under python, "
        "accelerate launch (DDP) and DeepSpeed; re-running the command resumes from the last checkpoint.",
    )
    t.add_argument("recipe", help="recipe YAML file with a supernet: section, or a shipped recipe's name")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value by its dotted path, e.g. supernet.train.max_steps=500 (repeatable)")
    t.add_argument("--out", type=Path, help="supernet folder (default: supernet.out, else runs/<study>/supernet)")
    t.set_defaults(func=train)
    s = cmds.add_parser("show", help="print what a supernet checkpoint holds")
    s.add_argument("path", type=Path, help="supernet folder or checkpoint-<step> folder")
    s.set_defaults(func=show)


def supernet_dir(recipe) -> Path:
    """Where the recipe's supernet lives: ``supernet.out`` or ``<run_dir>/<study>/supernet``."""
    out = recipe.supernet.out if recipe.supernet is not None else None
    return Path(out) if out else recipe.study_dir / "supernet"


def train(args: argparse.Namespace) -> int:
    from llmnas.errors import RecipeError
    from llmnas.recipe import load_recipe
    from llmnas.search.engine import prepare_space, recipe_data
    from llmnas.supernet.train import train_supernet
    from llmnas.train import make_accelerator

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.supernet is None or recipe.supernet_train is None:
        raise RecipeError(
            f"{recipe.source}: no supernet: section (see recipes/supernet_quick.yaml: supernet: {{random_subnets: 2, "
            "train: {max_steps: ...}}})"
        )
    cfg = recipe.supernet_train
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        data = recipe_data(recipe)
    space = prepare_space(recipe, data)
    out = args.out or supernet_dir(recipe)
    run = train_supernet(space, data, recipe.supernet, cfg, accelerator, out)
    if accelerator.is_main_process:
        scores = ", ".join(f"{role} {value:.4f}" for role, value in run.scores.items())
        what = (f"{run.parts} supernets split on {recipe.supernet.split}, {run.steps} steps each" if run.parts > 1
                else f"{run.steps} steps")
        print(f"supernet: {run.path} after {what}, {run.tokens:,} subnet tokens, {run.train_seconds:.0f}s"
              + (f"; validation loss {scores}" if scores else ""))
        print(f"search it: {search_command(args, recipe, out)}")
    return 0


def search_command(args: argparse.Namespace, recipe, out: Path) -> str:
    """The ``llmnas search`` command that scores with this supernet: the user's overrides, plus the
    evaluator and the folder when the recipe would not find them by itself."""
    import shlex

    words = ["llmnas", "search", str(args.recipe)]
    for item in args.overrides:
        words += ["--set", item]
    sets = []
    if recipe.search.evaluator != "supernet":
        sets.append("search.evaluator=supernet")
    if args.out is not None or recipe.search.evaluator != "supernet" or recipe.search.supernet is not None:
        sets.append(f"search.supernet={out}")
    for item in sets:
        words += ["--set", item]
    return shlex.join(words)


def show(args: argparse.Namespace) -> int:
    from llmnas.supernet.checkpoint import load_supernet

    ckpt = load_supernet(args.path)
    m = ckpt.meta
    print(json.dumps({
        "checkpoint": str(ckpt.path), "id": ckpt.id, "space": m["space"]["name"], "weights": ckpt.net.num_parameters(),
        "step": m["step"], "total_steps": m["total_steps"], "finished": m["finished"], "tokens": m["tokens"],
        "train_seconds": round(m["train_seconds"], 1), "losses": m["losses"], "scores": m["scores"],
        "constraints": m["constraints"], "sandwich": m["config"],
        **({"split": m["split"]} if "split" in m else {}),
    }, indent=1, default=str))
    return 0
