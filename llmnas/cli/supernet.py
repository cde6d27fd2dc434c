"""``llmnas supernet train|calibrate|show``: train the weight-shared supernet a recipe describes, calibrate its
scores against trials trained from scratch, and inspect one."""

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
    c = cmds.add_parser(
        "calibrate",
        help="fit search.calibration: the supernet's inherited losses against a from-scratch study's trials",
        description="Score the architectures of a study whose trials were trained from scratch (the same space and "
        "data) with the recipe's supernet, fit the from-scratch losses on the inherited ones, the depth and an "
        "offset per value of the --offsets decisions (llmnas.supernet.calibration), and print the recipe's "
        "search.calibration block with the ranking it gives (in-sample and leave-one-out Kendall tau).",
    )
    c.add_argument("recipe", help="the search recipe (evaluator supernet), or a shipped recipe's name")
    c.add_argument("--from", dest="source", required=True,
                   help="the from-scratch study: its run folder, study.db file or storage URL")
    c.add_argument("--study", help="the study's name where the storage holds several")
    c.add_argument("--offsets", default="pos", help="comma-separated decisions given an offset per value "
                   "(of pos, norm, d_model; '' for none; default pos)")
    c.add_argument("--no-per-layer", action="store_true", help="fit without the per-layer term")
    c.add_argument("--out", type=Path, help="also write the calibration and its figures to this JSON file")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value by its dotted path (repeatable)")
    c.set_defaults(func=calibrate)
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


#: data keys a from-scratch study and the calibrated search must share (their losses are compared)
SAME_DATA = ("source", "tokenizer", "block_size", "val_fraction", "holdout")


def calibrate(args: argparse.Namespace) -> int:
    import dataclasses

    import scipy.stats as sps
    import yaml
    from optuna.trial import TrialState

    from llmnas.errors import ArchitectureError, RecipeError
    from llmnas.recipe import load_recipe
    from llmnas.search import load_study, trial_arch
    from llmnas.search.engine import recipe_data
    from llmnas.search.evaluators import supernet_location
    from llmnas.search.study import StudyError
    from llmnas.supernet import evaluate_subnet, load_supernet
    from llmnas.supernet.calibration import OFFSET_DECISIONS, fit
    from llmnas.train import make_accelerator

    recipe = load_recipe(args.recipe, [*args.overrides, "search.evaluator=supernet", "search.calibration=null"])
    offsets = tuple(filter(None, (d.strip() for d in args.offsets.split(","))))
    bad = [d for d in offsets if d not in OFFSET_DECISIONS]
    if bad:
        allowed = ", ".join(OFFSET_DECISIONS)
        raise RecipeError(f"--offsets: {', '.join(map(repr, bad))} not allowed (allowed: {allowed})")
    study = load_study(args.source, args.study)
    label = f"{args.source} (study {study.study_name!r})"
    theirs = (study.user_attrs.get("recipe") or {}).get("data") or {}
    ours = dataclasses.asdict(recipe.data)
    differ = [k for k in SAME_DATA if k in theirs and theirs[k] != ours.get(k)]
    if differ:
        what = "; ".join(f"data.{k}: {theirs[k]!r}, the recipe {ours.get(k)!r}" for k in differ)
        raise StudyError(f"{label}: its trials were measured on other data ({what}); calibrate against a study "
                         "of the same data")
    trials, scored_by = {}, set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        kind = t.user_attrs.get("evaluator", "scratch")
        if kind != "scratch":
            scored_by.add(kind)
        elif "val_loss" in t.user_attrs and "arch" in t.user_attrs:
            trials.setdefault(t.user_attrs["arch_id"], t)  # a reused trial repeats its architecture's result
    if scored_by and not trials:
        raise StudyError(f"{label}: its trials were scored by {', '.join(sorted(scored_by))}, not trained from "
                         "scratch: calibrate against a study with search.evaluator: scratch")
    location = supernet_location(recipe)
    accelerator = make_accelerator(recipe.train)
    data = recipe_data(recipe)
    net = load_supernet(location, device=accelerator.device).net
    archs, inherited, truth, outside = [], [], [], 0
    for t in trials.values():
        arch = trial_arch(t)
        try:
            net.check(arch)
        except ArchitectureError:  # another space's architecture: the supernet cannot score it
            outside += 1
            continue
        archs.append(arch)
        inherited.append(evaluate_subnet(net, arch, data, recipe.train, accelerator).val_loss)
        truth.append(float(t.user_attrs["val_loss"]))
    try:
        calibration = fit(archs, inherited, truth, offsets=offsets, per_layer=not args.no_per_layer)
    except ValueError as e:
        raise StudyError(f"{label}: {len(archs)} from-scratch architectures the supernet holds: {e}") from None
    # leave one out: each architecture predicted by the calibration fitted on the others
    held = []
    for i in range(len(archs)):
        rest = [j for j in range(len(archs)) if j != i]
        try:
            c = fit([archs[j] for j in rest], [inherited[j] for j in rest], [truth[j] for j in rest],
                    offsets=offsets, per_layer=not args.no_per_layer)
            held.append(c.predict(archs[i], inherited[i]))
        except (ValueError, RecipeError):  # a value only this architecture has: no offset without it
            held = []
            break
    predicted = [calibration.predict(a, x) for a, x in zip(archs, inherited, strict=True)]
    taus = {"inherited": float(sps.kendalltau(truth, inherited).statistic),
            "calibrated (in-sample)": float(sps.kendalltau(truth, predicted).statistic)}
    if held:
        taus["calibrated (leave-one-out)"] = float(sps.kendalltau(truth, held).statistic)
    if accelerator.is_main_process:
        print(f"calibration of {location} against {len(archs)} from-scratch architectures of {label}"
              + (f" ({outside} outside the supernet's space skipped)" if outside else ""))
        for name, tau in taus.items():
            print(f"  Kendall tau vs from scratch, {name}: {tau:.3f}")
        block = yaml.safe_dump({"search": {"calibration": calibration.to_dict()}}, sort_keys=False)
        print(f"add to {recipe.source}:\n{block}", end="")
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"calibration": calibration.to_dict(), "n": len(archs),
                                            "study": label, "supernet": str(location), "kendall_tau": taus},
                                           indent=1) + "\n")
            print(f"written: {args.out}")
    return 0
