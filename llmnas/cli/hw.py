"""``llmnas hw profile|predict|measure``: measure a space on this device, fit its latency predictor, use it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmnas.errors import OutputError, blocking_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hw", help="measure latency and memory on this device; fit and use a latency predictor")
    cmds = p.add_subparsers(dest="hw_command", required=True, metavar="ACTION")

    prof = cmds.add_parser("profile", help="measure a sample of a space, fit the predictor, print its held-out error")
    prof.add_argument("space", help="YAML space file or a shipped space's name (tiny, moe, ...)")
    prof.add_argument("--n", type=int, default=200, help="architectures to measure (default 200)")
    prof.add_argument("--out", type=Path, required=True, help="folder for predictor.json, measurements, report")
    prof.add_argument("--holdout", type=float, default=0.5, help="share held out to test the fit (default 0.5)")
    prof.add_argument("--seed", type=int, default=0)
    prof.add_argument("--overwrite", action="store_true", help="replace a predictor already in --out")
    _settings_args(prof)
    prof.set_defaults(func=profile)

    pred = cmds.add_parser("predict", help="predicted latency, throughput and memory of an architecture")
    pred.add_argument("arch", type=Path, help="architecture JSON (llmnas space sample ... --out ARCH.json)")
    pred.add_argument("--predictor", type=Path, required=True, help="predictor.json written by llmnas hw profile")
    pred.add_argument("--device", default="cpu")
    pred.add_argument("--json", action="store_true")
    pred.set_defaults(func=predict)

    meas = cmds.add_parser("measure", help="measure an architecture on this device")
    meas.add_argument("arch", type=Path)
    meas.add_argument("--json", action="store_true")
    _settings_args(meas)
    meas.set_defaults(func=measure_cmd)


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--train-repeats", type=int, default=5, help="timed training steps (0: not measured)")
    p.add_argument("--train-seq-len", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while measuring (default 1)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="measure in this process instead of a fresh one per chunk of architectures (quicker to "
                        "start; what the process ran before can then change the figures)")


def _settings(args: argparse.Namespace):
    from llmnas.hardware import Settings

    return Settings(batch_size=args.batch_size, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                    repeats=args.repeats, train_repeats=args.train_repeats, train_seq_len=args.train_seq_len,
                    threads=args.threads, dtype=args.dtype, isolate=args.isolate)


def profile(args: argparse.Namespace) -> int:
    from llmnas.hardware import HardwareError, profile_space, resolve_device
    from llmnas.space import TransformerSpace, load_space

    settings = _settings(args)
    resolve_device(args.device)
    space = load_space(args.space)
    if not isinstance(space, TransformerSpace):
        raise HardwareError(f"space {args.space!r}: not a transformer space (hardware profiles are for decoders)")
    blocker = blocking_file(args.out / "predictor.json")
    if blocker is not None or (args.out.exists() and not args.out.is_dir()):
        raise OutputError(f"--out {args.out}: {blocker or args.out} is a file, not a folder")
    if (args.out / "predictor.json").exists() and not args.overwrite:
        raise OutputError(f"--out {args.out}: already holds predictor.json (use --overwrite to replace it)")
    predictor = profile_space(space, args.n, args.out, device=args.device, settings=settings,
                              holdout=args.holdout, seed=args.seed)
    print((args.out / "report.md").read_text())
    print(f"predictor: {predictor.path}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from llmnas.hardware import load_predictor
    from llmnas.space.arch import Architecture

    arch = Architecture.load(args.arch)
    predictor = load_predictor(args.predictor, device=args.device)
    values = predictor.predict(arch)
    if args.json:
        print(json.dumps({"arch_id": arch.id, "predicted": values, "settings": predictor.settings.to_dict(),
                          "holdout_error": predictor.report.get("holdout", {})}, indent=2))
        return 0
    print(arch.summary())
    s = predictor.settings
    print(f"predicted on {predictor.device['cpu_model']}, {s.threads} thread(s), {s.dtype}, batch {s.batch_size}, "
          f"prompt {s.prompt_len}, {s.new_tokens} new tokens:")
    holdout = predictor.report.get("holdout", {})
    for key in ("prefill_ms", "decode_tokens_per_s", "peak_memory_mb", "train_step_ms"):
        if key in values:
            err = holdout.get(key, {}).get("predictor")
            note = (f"   (held-out: {err['within_10pct']:.0%} within ±10 %, Spearman {err['spearman']:.3f}, "
                    f"n={err['n']})" if err else "")
            print(f"  {key:22s} {values[key]:10.3f}{note}")
    return 0


def measure_cmd(args: argparse.Namespace) -> int:
    from llmnas.hardware import measure
    from llmnas.space.arch import Architecture

    arch = Architecture.load(args.arch)
    m = measure(arch, args.device, _settings(args))
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
        return 0
    print(arch.summary())
    for key, value in m.values().items():
        print(f"  {key:22s} {value:10.3f}")
    return 0
