"""``llmnas search`` (run or resume a study), ``llmnas train`` (retrain a chosen architecture) and ``llmnas confirm``
(re-measure the best cells of a vision study with more seeds before choosing)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="run (or resume) the architecture search a recipe describes",
        description="Run an Optuna study whose trials train sampled architectures from scratch. Re-running "
        "the same command resumes the study. Watch it with optuna-dashboard on the printed storage URL.",
    )
    p.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe (quickstart, ...)")
    _overrides(p)
    p.add_argument("--n-trials", type=int, help="trials the study should hold when done (default: the recipe's)")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--workers", type=int, help="worker processes sharing the study on this machine")
    p.add_argument("--storage", help="Optuna storage URL: sqlite:///PATH, postgresql://USER@HOST/DB (many machines) "
                   "or journal:///PATH (a file on a shared disk) (default: sqlite:///runs/<study>/study.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    p.set_defaults(func=search)

    t = sub.add_parser(
        "train",
        help="retrain an architecture from scratch with the recipe's retrain budget and save a checkpoint",
    )
    t.add_argument("recipe")
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", type=Path, help="architecture JSON file")
    which.add_argument("--trial", help="'best' or a trial number of the recipe's study")
    _overrides(t)
    t.add_argument("--seed", type=int, help="training seed (default: the recipe's)")
    t.add_argument("--storage", help="storage URL of the study (default: the recipe's)")
    t.add_argument("--out", type=Path, help="checkpoint folder (default: runs/<study>/retrain/<arch id>[-seed<N>])")
    t.set_defaults(func=retrain)

    c = sub.add_parser(
        "confirm",
        help="retrain the best cells of a finished vision study with more seeds and pick by their mean",
        description="Retrain the study's best --top-k distinct cells from scratch with the recipe's budget and each "
        "of --seeds, score every run on --valid-images of the validation half, and pick the cell with the highest "
        "mean validation accuracy (ties: the better search rank). Runs are stored in the study as they finish: "
        "rerunning resumes, and --shard K/N shares the runs between commands started side by side. A larger "
        "budget per run, e.g. --set train.train_images=10000, is another protocol: its runs are stored apart.",
    )
    c.add_argument("recipe", help="the vision recipe of the study (the same --set overrides as the search)")
    _overrides(c)
    c.add_argument("--top-k", type=int, default=5, help="cells to confirm (default 5)")
    c.add_argument("--seeds", default="1,2,3", help="training seeds, comma-separated (default 1,2,3)")
    c.add_argument("--valid-images", default="all",
                   help="validation images scoring each run: a number, or 'all' (default: the whole validation half)")
    c.add_argument("--shard", default="0/1", metavar="K/N", help="train only every N-th run, from the K-th")
    c.add_argument("--storage", help="storage URL of the study (default: the recipe's)")
    c.set_defaults(func=confirm)


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value by its dotted path, e.g. train.max_seconds=30 (repeatable)")


def _recipe(args: argparse.Namespace):
    from llmnas.recipe import load_recipe

    overrides = list(args.overrides)
    if getattr(args, "storage", None):
        overrides.append(f"search.storage={args.storage}")
    return load_recipe(args.recipe, overrides)


def search(args: argparse.Namespace) -> int:
    from llmnas.errors import RecipeError
    from llmnas.search import run_search
    from llmnas.search.progress import next_steps

    for name in ("n_trials", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RecipeError(f"--{name.replace('_', '-')}={value}: must be a positive integer")
    if args.timeout is not None and not 0 < args.timeout < math.inf:
        raise RecipeError(f"--timeout={args.timeout}: must be a positive number of seconds")
    recipe = _recipe(args)
    summary = run_search(recipe, n_trials=args.n_trials, timeout=args.timeout, workers=args.workers,
                         show_progress=not args.quiet)
    if summary is None or args.quiet:
        return 0
    vision = getattr(recipe, "kind", None) == "vision"
    command = ["llmnas", "confirm" if vision else "train", args.recipe,
               *(x for o in args.overrides for x in ("--set", o))]
    if args.storage:
        command += ["--storage", args.storage]
    if vision:
        print(f"before choosing, retrain the best cells with more seeds: {shlex.join(command)}")
        return 0
    for line in next_steps(summary.study, summary.study_dir, summary.storage_url, shlex.join(command)):
        print(line)
    return 0


def confirm(args: argparse.Namespace) -> int:
    from llmnas.errors import RecipeError
    from llmnas.search.confirm import confirm_vision_study, parse_shard

    try:
        seeds = tuple(int(x) for x in args.seeds.split(","))
    except ValueError:
        raise RecipeError(f"--seeds {args.seeds!r}: must be integers separated by commas, e.g. 1,2,3") from None
    try:
        valid = None if args.valid_images == "all" else int(args.valid_images)
    except ValueError:
        raise RecipeError(f"--valid-images {args.valid_images!r}: must be a positive integer, or 'all'") from None
    confirm_vision_study(_recipe(args), top_k=args.top_k, seeds=seeds, valid_images=valid,
                         shard=parse_shard(args.shard))
    return 0


def retrain(args: argparse.Namespace) -> int:
    from llmnas.errors import RecipeError
    from llmnas.export import save_checkpoint
    from llmnas.search import load_study, select_trial, trial_arch
    from llmnas.search.engine import recipe_data
    from llmnas.space.arch import Architecture
    from llmnas.train import make_accelerator, train

    recipe = _recipe(args)
    cfg = recipe.retrain or recipe.train
    if args.seed is not None:
        cfg = cfg.replace(seed=args.seed)
    accelerator = make_accelerator(cfg)
    # The search selected on data.holdout (carved from the training split); the winner retrains on the
    # whole training split and is scored on the corpus's own validation split, which the search never saw.
    data_cfg = dataclasses.replace(recipe.data, holdout=None)
    with accelerator.main_process_first():
        data = recipe_data(recipe, data_cfg)
    if args.arch is not None:
        arch = Architecture.load(args.arch)
        origin = str(args.arch)
    else:
        study = load_study(recipe.storage_url, recipe.study)
        trial = select_trial(study, args.trial)
        arch = trial_arch(trial)
        origin = f"trial {trial.number} of study {recipe.study!r}"
    if arch.vocab_size < data.vocab_size or arch.max_seq_len != recipe.data.block_size:
        raise RecipeError(
            f"{origin}: vocab_size {arch.vocab_size} / max_seq_len {arch.max_seq_len} do not fit the recipe's data "
            f"(tokenizer {data.vocab_size} ids, block_size {recipe.data.block_size})"
        )
    out = args.out or recipe.study_dir / "retrain" / (arch.id + (f"-seed{args.seed}" if args.seed is not None else ""))
    accelerator.print(f"retraining {arch.summary()} ({origin}) with {_budget(cfg)}")
    model, result = train(arch, data, cfg, accelerator)
    if accelerator.is_main_process:
        save_checkpoint(model, out, tokenizer=data.tokenizer)
        split = {"n_train_tokens": data.meta.n_train_tokens, "n_val_tokens": data.meta.n_val_tokens,
                 "search_holdout": recipe.data.holdout}
        record = {"arch_id": arch.id, "origin": origin, "seed": cfg.seed, "data": split, **result.to_dict()}
        (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
        bpb = f", {result.bits_per_byte:.4f} bits/byte" if result.bits_per_byte else ""
        print(f"validation loss {result.val_loss:.4f} nats/token{bpb} after {result.steps} steps, "
              f"{result.tokens:,} tokens, {result.train_seconds:.0f}s ({result.tokens_per_second:,.0f} tok/s)")
        print(f"checkpoint: {out}   export it: llmnas export {out}/arch.json --weights {out} --out {out}/hf")
    return 0


def _budget(cfg) -> str:
    parts = [f"{k}={getattr(cfg, k)}" for k in ("max_steps", "max_tokens", "max_seconds") if getattr(cfg, k)]
    return ", ".join(parts)
