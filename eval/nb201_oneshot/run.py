"""NAS-Bench-201 one-shot search on real CIFAR-10: DARTS, GDAS, ENAS, SPOS, DrNAS, found cells looked up in the table.

Each stage is one ``llmnas bench nb201-oneshot`` invocation (results under ``eval/nb201_oneshot/results/``):

- ``cpu`` -- the reported table: the CPU protocol (the command's defaults: C = 8, N = 1, 5,000 + 5,000 images
  of NAS-Bench-201's halves, 2 / 5 / 5 / 6 epochs for DARTS / GDAS / ENAS / SPOS), seeds 0-2, two searches at a
  time, one torch thread each: ``results/cpu/{results.md,runs.json,search.png}``.
- ``tune`` -- the same on seed 100 (never reported), for choosing settings: ``results/tune/``.
- ``collapse1000``, ``collapse500`` -- DARTS alone, seed 0, 20 epochs on 1,000 images / 40 epochs on 500 images,
  architecture lr 1e-2: the onset of DARTS's collapse toward parameter-free ops (``results/darts_collapse*/``).
- ``drnas`` -- DrNAS alone on the CPU protocol with 8 epochs (chosen on seed 100: ``results/drnas_tune/RULE.md``),
  seeds 0-2, one search at a time, one torch thread: ``results/drnas/``; ``drnas_tune``, ``drnas_tune8`` -- seed
  100 (never reported) at the default 2 epochs (DARTS's) and at 8: ``results/drnas_tune{,_8}/``.
- ``darts_minus`` -- DARTS- (an auxiliary skip on every edge, its weight decaying from 1 to 0) with DARTS's settings
  and 8 epochs (as ``darts_8ep``; fixed before any DARTS- run, nothing tuned), seeds 0-2: ``results/darts_minus/``.
- ``drnas_2ep``, ``darts_8ep`` -- equal-budget diagnostics for the ``drnas`` stage, seeds 0-2: DrNAS at DARTS's
  2 epochs (``results/drnas_2ep/``) and DARTS at DrNAS's 8 (``results/darts_8ep/``).
- ``pt_tune_darts``, ``pt_tune_blank`` -- perturbation selection (DARTS-PT) after DARTS's 8-epoch search, and after
  8 epochs with the architecture weights fixed (the uniform mixture), on seeds 100-101 (never reported):
  ``results/pt_tune/`` and its ``RULE.md``, which picks one of them; ``darts_pt`` / ``blank_pt`` -- that one on
  seeds 0-2: ``results/darts_pt/`` or ``results/blank_pt/``; ``drnas_pt`` -- the same selection on the ``drnas``
  stage's 8-epoch DrNAS supernets, seeds 0-2, not tuned: ``results/drnas_pt/``.
- ``gpu`` -- NAS-Bench-201's own protocol (C = 16, N = 5, 50 epochs on the full 25,000 + 25,000 images,
  architecture Adam 3e-4) from ``gpu.yaml``; needs a CUDA device (not run here). ``gpu_pt``: DARTS on the same
  protocol with perturbation selection, 5 epochs between edge decisions (DARTS-PT's interval; not run here).

    python eval/nb201_oneshot/run.py                    # stage cpu (about 1-1.5 hours on 2 shared cores)
    python eval/nb201_oneshot/run.py --stages tune
    python eval/nb201_oneshot/run.py --stages drnas     # DrNAS, seeds 0-2 (about 20 minutes on one idle core)
    python eval/nb201_oneshot/run.py --stages gpu       # on a machine with a GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmnas.cli import main as llmnas

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: perturbation selection at DARTS's 8 epochs, one epoch of training between edge decisions, all 5,000 validation images
PT = ["--set", "epochs={darts: 8}", "--set", "select=perturbation", "--set", "pt_tune_epochs=1"]
STAGES = {
    "cpu": ["--seeds", "3", "--seed", "0", "--workers", "2", "--out", str(RESULTS / "cpu")],
    "tune": ["--seeds", "1", "--seed", "100", "--workers", "2", "--out", str(RESULTS / "tune")],
    "gpu": ["--seeds", "3", "--seed", "0", "--config", str(HERE / "gpu.yaml"), "--out", str(RESULTS / "gpu")],
    # DARTS-PT's own NAS-Bench-201 setting on a GPU: DARTS's 50-epoch search, then 5 epochs between edge decisions
    "gpu_pt": ["--seeds", "3", "--seed", "0", "--config", str(HERE / "gpu.yaml"), "--set", "select=perturbation",
               "--set", "pt_tune_epochs=5", "--out", str(RESULTS / "gpu_pt")],
    # DARTS run longer on a small training set, architecture lr 1e-2: the onset of its collapse (DARTS only)
    "collapse1000": ["--seeds", "1", "--seed", "0", "--set", "train_images=1000", "--set", "valid_images=1000",
                     "--set", "epochs={darts: 20}", "--set", "arch_lr=0.01", "--set", "snapshots_per_epoch=1",
                     "--out", str(RESULTS / "darts_collapse")],
    "collapse500": ["--seeds", "1", "--seed", "0", "--set", "train_images=500", "--set", "valid_images=500",
                    "--set", "epochs={darts: 40}", "--set", "arch_lr=0.01", "--set", "snapshots_per_epoch=1",
                    "--out", str(RESULTS / "darts_collapse_500")],
    # DrNAS: 8 epochs, chosen on seed 100 by the rule in results/drnas_tune/RULE.md (drnas_tune, drnas_tune8)
    "drnas": ["--seeds", "3", "--seed", "0", "--set", "epochs={drnas: 8}", "--out", str(RESULTS / "drnas")],
    "drnas_tune": ["--seeds", "1", "--seed", "100", "--out", str(RESULTS / "drnas_tune")],
    "drnas_tune8": ["--seeds", "1", "--seed", "100", "--set", "epochs={drnas: 8}",
                    "--out", str(RESULTS / "drnas_tune_8")],
    # equal-budget diagnostics beside the drnas stage: DrNAS at DARTS's 2 epochs, DARTS at DrNAS's 8 (seeds 0-2)
    "drnas_2ep": ["--seeds", "3", "--seed", "0", "--out", str(RESULTS / "drnas_2ep")],
    "darts_8ep": ["--seeds", "3", "--seed", "0", "--set", "epochs={darts: 8}", "--out", str(RESULTS / "darts_8ep")],
    # DARTS- (auxiliary skip, beta 1 -> 0): DARTS's settings at the 8 epochs of darts_8ep, fixed in advance, seeds 0-2
    "darts_minus": ["--seeds", "3", "--seed", "0", "--out", str(RESULTS / "darts_minus")],
    # perturbation selection (DARTS-PT): two variants tuned on seeds 100-101 by results/pt_tune/RULE.md, then
    # the chosen one on seeds 0-2 (darts_pt: DARTS's search then PT; blank_pt: architecture weights fixed, then PT)
    "pt_tune_darts": ["--seeds", "2", "--seed", "100", *PT, "--out", str(RESULTS / "pt_tune" / "darts_pt")],
    "pt_tune_blank": ["--seeds", "2", "--seed", "100", *PT, "--set", "arch_lr=0",
                      "--out", str(RESULTS / "pt_tune" / "blank_pt")],
    "darts_pt": ["--seeds", "3", "--seed", "0", *PT, "--workers", "2", "--out", str(RESULTS / "darts_pt")],
    # the chosen selection applied unchanged to DrNAS's 8-epoch supernet (the drnas stage's), seeds 0-2, not tuned
    "drnas_pt": ["--seeds", "3", "--seed", "0", "--set", "epochs={drnas: 8}", "--set", "select=perturbation",
                 "--set", "pt_tune_epochs=1", "--workers", "2", "--out", str(RESULTS / "drnas_pt")],
    "blank_pt": ["--seeds", "3", "--seed", "0", *PT, "--set", "arch_lr=0", "--workers", "2",
                 "--out", str(RESULTS / "blank_pt")],
}
#: stages that run one strategy whatever --strategies says
ONLY = {"collapse1000": "darts", "collapse500": "darts", "darts_8ep": "darts", "darts_minus": "darts_minus",
        **{s: "drnas" for s in ("drnas", "drnas_tune", "drnas_tune8", "drnas_2ep", "drnas_pt")},
        **{s: "darts" for s in ("pt_tune_darts", "pt_tune_blank", "darts_pt", "blank_pt", "gpu_pt")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="cpu", help=f"comma list of {', '.join(STAGES)} (default cpu)")
    parser.add_argument("--strategies", default="darts,gdas,enas,spos",
                        help="for the cpu, tune and gpu stages (default darts,gdas,enas,spos: the reported table)")
    parser.add_argument("--resume", action="store_true", help="keep finished runs with the same settings")
    args = parser.parse_args(argv)
    for stage in (s.strip() for s in args.stages.split(",") if s.strip()):
        if stage not in STAGES:
            parser.error(f"unknown stage {stage!r} (allowed: {', '.join(STAGES)})")
        strategies = ONLY.get(stage, args.strategies)
        code = llmnas(["bench", "nb201-oneshot", "--strategies", strategies, *STAGES[stage],
                       *(["--resume"] if args.resume else [])])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
