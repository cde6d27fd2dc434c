"""The weights a search keeps: those of its best trials, so that the winner exports straight away.

``<run_dir>/<study>/trials/<number>/`` holds a trial's checkpoint (``llmnas export RUN --trial best``
finds it). With ``search.keep_checkpoints: K`` a trained trial's weights are written when it is among
the K best trained trials so far (by the first objective) and are small enough; the folders of trials
that fell out of the K best are removed. Several workers may do this at once: a folder is only
removed for a trial that has finished, never for one that is still running.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / str(number)


def weights_mb(model: torch.nn.Module) -> float:
    """Size of the weights in float32 megabytes (as ``save_checkpoint`` writes them)."""
    return sum(p.numel() for p in model.parameters()) * 4 / 2**20


def best_trained(study: optuna.Study, keep: int, current: tuple[int, float] | None = None) -> set[int]:
    """Numbers of the ``keep`` best trained trials by the first objective (ties: the earlier trial), with
    ``current`` (number, value) standing for a trial that is about to complete."""
    scored = [(t.values[0], t.number) for t in _trained(study)]
    if current is not None:
        scored.append((current[1], current[0]))
    return {number for _, number in sorted(scored)[:keep]}


def _trained(study: optuna.Study) -> list[FrozenTrial]:
    # a trial that reused an earlier result has no weights of its own
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in done if "reused_from" not in t.user_attrs]


def remove_outside(study: optuna.Study, study_dir: Path, kept: set[int]) -> list[int]:
    """Remove the checkpoint folders of finished trials not in ``kept``; return their numbers."""
    folder = study_dir / "trials"
    if not folder.is_dir():
        return []
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    removed = []
    for path in folder.iterdir():
        if path.is_dir() and path.name.isdigit() and int(path.name) not in kept | running:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(int(path.name))
    return sorted(removed)
