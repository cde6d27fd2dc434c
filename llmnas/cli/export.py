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
        "of its checkpoint (<run folder>/trials/<number>, written when search.save_checkpoints is on)",
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

    state_dict, tokenizer = None, None
    if args.trial is not None:
        arch, checkpoint = _trial(args)
        weights = args.weights if args.weights is not None else checkpoint
    else:
        arch, weights = Architecture.load(args.arch), args.weights
    if weights is not None:
        state_dict, tokenizer = load_weights(weights, arch)
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
    return 0


def _trial(args: argparse.Namespace) -> tuple[Any, Path]:
    """The architecture of ``--trial`` and its checkpoint folder (which must exist unless ``--weights``)."""
    from llmnas.errors import ExportError
    from llmnas.search.study import load_study, select_trial, trial_arch

    study = load_study(args.arch, args.study)
    trial = select_trial(study, args.trial)
    arch = trial_arch(trial)
    checkpoint = Path(args.arch) / "trials" / str(trial.number)
    if args.weights is None and not (checkpoint / "model.safetensors").is_file():
        raise ExportError(
            f"trial {trial.number} of study {study.study_name!r} has no checkpoint {checkpoint} (the search ran "
            "without search.save_checkpoints): retrain it with `llmnas train RECIPE --trial "
            f"{trial.number}` and export that checkpoint, or pass --weights"
        )
    print(f"trial {trial.number} of study {study.study_name!r}: {arch.summary()}")
    return arch, checkpoint
