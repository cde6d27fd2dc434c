"""``llmnas export``: write an architecture (fresh or trained weights) as a Hugging Face model directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# llmnas.export (torch, transformers) is imported when the command runs, not when the CLI starts
TOKENIZER_HELP = "byte, char:CORPUS_FILE, or a Hugging Face tokenizer name or directory"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export an architecture as a Hugging Face model directory (checked for logits parity)",
        description=(
            "Write ARCH with fresh or trained weights as a model directory that AutoModelForCausalLM "
            "loads: through a stock transformers class (Llama, Mistral, Ministral, Mixtral, "
            "GraniteMoeShared, GPT-2, StarCoder2) when the architecture fits one exactly, else through "
            "self-contained remote code (trust_remote_code=True). The directory is reloaded and its "
            "logits compared with the llmnas model before success is reported."
        ),
    )
    p.add_argument(
        "arch",
        help="architecture JSON file (llmnas space sample --out, or a checkpoint's arch.json); with --trial, a "
        "run folder runs/<study>, a study.db file or an Optuna storage URL",
    )
    p.add_argument("--out", type=Path, required=True, help="model directory to create")
    p.add_argument(
        "--weights",
        type=Path,
        help="a checkpoint directory (arch.json + model.safetensors) or a .safetensors Decoder state dict; "
        "default: freshly initialised weights",
    )
    p.add_argument(
        "--trial",
        help="'best' or a trial number of the study in ARCH: exports that trial's architecture with the weights "
        "of its checkpoint: <run folder>/retrain/<arch id> (llmnas train RECIPE --trial ...), else "
        "<run folder>/trials/<number> (a search keeps its best search.keep_checkpoints trials' weights)",
    )
    p.add_argument(
        "--supernet",
        nargs="?",
        const="trial",
        metavar="DIR",
        help="inherited weights: ARCH's slice of the supernet in DIR (a supernet folder or one checkpoint-<step> "
        "folder); with --trial and no DIR, the supernet checkpoint that scored the trial",
    )
    p.add_argument("--study", help="with --trial: the study name, when the storage holds several")
    p.add_argument("--tokenizer", help=f"{TOKENIZER_HELP}; default: the checkpoint's tokenizer, else byte")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the saved weights (default float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh weights (without --weights)")
    p.add_argument("--force-custom", action="store_true",
                   help="use the llmnas remote code even when a stock class fits")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmnas.export import export_model, load_weights
    from llmnas.export.tokenizer import resolve_tokenizer
    from llmnas.space.arch import Architecture

    _check_args(args)
    state_dict, tokenizer = None, None
    if args.trial is not None:
        arch, weights = _trial(args)
    else:
        arch, weights = Architecture.load(args.arch), args.weights
    if args.supernet is not None:
        state_dict, tokenizer = _inherited(args, arch)
    elif weights is not None:
        state_dict, tokenizer = load_weights(weights, arch, with_tokenizer=args.tokenizer is None)
    if args.tokenizer is not None:
        tokenizer = resolve_tokenizer(args.tokenizer)
    report = export_model(
        arch,
        args.out,
        state_dict=state_dict,
        tokenizer=tokenizer,
        seed=args.seed,
        dtype=args.dtype,
        force_custom=args.force_custom,
        overwrite=args.overwrite,
    )
    print(report)
    remote = ", trust_remote_code=True" if report.remote_code else ""
    print(f"load it: AutoModelForCausalLM.from_pretrained({str(report.path)!r}{remote})")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse what cannot work before anything is read, created or written."""
    from llmnas.errors import ExportError, OutputError, blocking_file

    if args.seed < 0:
        raise ExportError(f"--seed {args.seed}: must be a non-negative integer")
    blocker = blocking_file(args.out)
    if blocker is not None:
        raise OutputError(f"--out {args.out}: cannot be created, {blocker} is a file, not a folder")
    if args.trial is None and args.study is not None:
        raise ExportError(f"--study {args.study}: only means something with --trial")
    if args.trial is not None:
        _check_storage(args.arch)
    if args.supernet is not None and args.weights is not None:
        raise ExportError("--supernet and --weights: give one (inherited or trained weights)")
    if args.supernet == "trial" and args.trial is None:
        raise ExportError("--supernet without a folder needs --trial (the trial names the supernet that scored it)")
    if args.supernet not in (None, "trial") and not Path(args.supernet).exists():
        raise ExportError(f"--supernet {args.supernet}: no such supernet folder")
    if args.weights is not None and not args.weights.exists():
        raise ExportError(f"--weights {args.weights}: no such checkpoint folder or .safetensors file")


def _inherited(args: argparse.Namespace, arch: Any) -> tuple[dict, Any]:
    """``arch``'s weights sliced out of the supernet, and the tokenizer saved beside them."""
    from llmnas.export.tokenizer import resolve_tokenizer
    from llmnas.supernet import load_supernet

    ckpt = load_supernet(args.supernet)
    model = ckpt.net.extract(arch)  # ArchitectureError when arch is not one of its subnets
    print(f"weights: inherited from supernet {ckpt.path} (id {ckpt.id}, step {ckpt.step})")
    tokenizer = None
    if args.tokenizer is None and ckpt.tokenizer is not None and ckpt.tokenizer.is_dir():
        tokenizer = resolve_tokenizer(str(ckpt.tokenizer))
    return model.state_dict(), tokenizer


def _check_storage(location: str) -> None:
    """A SQLite study that does not exist is an error: opening it would create an empty database."""
    from llmnas.errors import ExportError

    if location.startswith("sqlite:///"):
        path = Path(location.removeprefix("sqlite:///"))
        if not path.is_file():
            what = "is a folder, not a SQLite file" if path.is_dir() else "no such file"
            raise ExportError(f"{location}: {what} (export reads an existing study; it never creates one)")
    elif "://" not in location and Path(location).suffix == ".db" and not Path(location).is_file():
        raise ExportError(f"{location}: no such study file")


def _trial(args: argparse.Namespace) -> tuple[Any, Path]:
    """The architecture of ``--trial`` and its checkpoint folder (which must exist unless ``--weights``)."""
    from llmnas.errors import ExportError
    from llmnas.search.study import load_study, select_trial, trial_arch

    study = load_study(args.arch, args.study)
    trial = select_trial(study, args.trial)
    arch = trial_arch(trial)
    run = Path(args.arch)
    # the retrained weights (the recipe's retrain budget) before the search trial's own
    retrained = [run / "retrain" / arch.id, *sorted(run.glob(f"retrain/{arch.id}-seed*"))]
    candidates = [*retrained, run / "trials" / str(trial.number)]
    found = [c for c in candidates if (c / "model.safetensors").is_file()]
    print(f"trial {trial.number} of study {study.study_name!r}: {arch.summary()}")
    if args.weights is not None or args.supernet is not None:
        if args.supernet == "trial":
            args.supernet = trial.user_attrs.get("supernet_path")
            if args.supernet is None:
                raise ExportError(
                    f"trial {trial.number} of study {study.study_name!r} was not scored by a supernet: "
                    "give --supernet DIR"
                )
        return arch, args.weights
    if not found:
        raise ExportError(
            f"trial {trial.number} of study {study.study_name!r} has no checkpoint ({candidates[0]} or "
            f"{candidates[-1]}): retrain it with `llmnas train RECIPE --trial {args.trial}`, or pass --weights"
        )
    print(f"weights: {found[0]}")
    return arch, found[0]
