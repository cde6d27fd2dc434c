"""Settings of a one-shot search: the CPU protocol (the defaults) and NAS-Bench-201's own (:data:`GPU_PROTOCOL`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from llmnas.errors import RecipeError

STRATEGIES = ("darts", "gdas", "enas", "spos", "drnas", "darts_minus")
DRNAS_REGULARISERS = ("l2", "kl")
SELECTIONS = ("argmax", "perturbation")
#: Strategies whose supernet is trained as a weighted mixture of all ops: the ones perturbation selection applies to.
MIXTURE_STRATEGIES = ("darts", "darts_minus", "drnas")


@dataclass(frozen=True, kw_only=True)
class OneShotConfig:
    """How one search runs. The defaults are the reduced CPU protocol of ``eval/nb201_oneshot``."""

    C: int = 8
    """Channels of the first stage (NAS-Bench-201: 16)."""
    N: int = 1
    """Cells per stage (NAS-Bench-201: 5)."""
    epochs: dict[str, int] | None = None
    """Search epochs per strategy (``None``: :data:`CPU_EPOCHS`); one epoch passes over ``train_images``."""
    train_images: int = 5_000
    """Images of the 25,000-image training half the weights train on (``0``: all)."""
    valid_images: int = 5_000
    """Images of the 25,000-image validation half the architecture updates and rewards use (``0``: all)."""
    batch_size: int = 64
    lr: float = 0.025
    min_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-3
    """Adam step of DARTS's, GDAS's and DrNAS's architecture parameters (NAS-Bench-201: 3e-4 over 50 epochs);
    ``0`` keeps them fixed at their near-uniform start and skips the architecture steps (DARTS-PT's "fixed alpha":
    the supernet trains as the uniform mixture of all ops)."""
    arch_weight_decay: float = 1e-3
    """Adam weight decay of DARTS's and GDAS's logits (DrNAS uses its own regulariser instead, ``drnas_reg``)."""
    drnas_reg: str = "l2"
    """DrNAS's regulariser on the Dirichlet concentration beta: ``l2`` (``drnas_reg_scale / 2 * ||beta - 1||^2``,
    DrNAS's NAS-Bench-201 setting) or ``kl`` (``drnas_reg_scale * KL(Dir(beta) || Dir(1))``)."""
    drnas_reg_scale: float = 1e-3
    """Its scale (DrNAS on NAS-Bench-201: 1e-3; ``0`` switches it off)."""
    aux_skip: float = 1.0
    """DARTS-'s auxiliary skip weight at the start of the search (decays linearly to 0; its paper's 1.0)."""
    select: str = "argmax"
    """How DARTS, DARTS- and DrNAS name the found cell: ``argmax`` (the op of largest weight per edge) or
    ``perturbation`` (DARTS-PT, Wang et al., ICLR 2021: edge by edge in a random order, the op whose removal from
    the trained mixture lowers validation accuracy most, the edge then fixed to it, with ``pt_tune_epochs`` of
    further training between decisions)."""
    pt_tune_epochs: int = 1
    """Perturbation selection: epochs of training (weights and the remaining architecture parameters, learning
    rate ``lr / 10``) between two edge decisions (DARTS-PT on NAS-Bench-201: 5 after a 100-epoch search)."""
    pt_images: int = 0
    """Perturbation selection: validation images each removal is measured on (``0``: all ``valid_images``)."""
    tau_max: float = 10.0
    """GDAS's Gumbel-softmax temperature, annealed linearly from ``tau_max`` to ``tau_min``."""
    tau_min: float = 0.1
    controller_every: int = 2
    """ENAS: one controller update (a sampled cell's accuracy on one validation batch) every this many weight steps."""
    controller_lr: float = 0.02
    controller_entropy: float = 0.05
    final_samples: int = 20
    """ENAS: cells drawn from the trained controller; the best on the evaluation images is the found cell."""
    search_trials: int = 100
    """SPOS: evolution trials with inherited weights."""
    population_size: int = 20
    sample_size: int = 5
    eval_images: int = 500
    """Validation images a cell is scored on with inherited weights (ENAS's final pick, SPOS)."""
    bn_batches: int = 2
    """Training batches BatchNorm statistics are recalibrated on before a cell is scored."""
    fidelity_cells: int = 100
    """SPOS: random cells whose inherited-weight accuracy is ranked against the 200-epoch table."""
    fidelity_seed: int = 2020
    """Seed of those cells: fixed in advance, the same for every run."""
    snapshots_per_epoch: int = 4
    threads: int = 1
    device: str = "cpu"
    """Where the supernet trains (``cuda`` for the GPU protocol)."""

    def __post_init__(self) -> None:
        positive = ("C", "N", "batch_size", "controller_every", "final_samples", "search_trials", "eval_images",
                    "bn_batches", "snapshots_per_epoch", "threads", "population_size", "sample_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise RecipeError(f"one-shot setting {name}={getattr(self, name)} must be at least 1")
        for name in ("train_images", "valid_images", "fidelity_cells"):
            if getattr(self, name) < 0:
                raise RecipeError(f"one-shot setting {name}={getattr(self, name)} must be 0 or more")
        if self.sample_size > self.population_size:
            raise RecipeError(f"sample_size={self.sample_size} must not exceed population_size={self.population_size}")
        if self.drnas_reg not in DRNAS_REGULARISERS:
            raise RecipeError(f"drnas_reg={self.drnas_reg!r} is not a DrNAS regulariser (allowed: "
                              f"{', '.join(DRNAS_REGULARISERS)})")
        if not isinstance(self.drnas_reg_scale, int | float) or not math.isfinite(self.drnas_reg_scale) \
                or self.drnas_reg_scale < 0:
            raise RecipeError(f"drnas_reg_scale={self.drnas_reg_scale!r} must be a finite number, 0 or more")
        if not isinstance(self.aux_skip, int | float) or not math.isfinite(self.aux_skip) or self.aux_skip < 0:
            raise RecipeError(f"aux_skip={self.aux_skip!r} must be a finite number, 0 or more")
        if not isinstance(self.arch_lr, int | float) or not math.isfinite(self.arch_lr) or self.arch_lr < 0:
            raise RecipeError(f"arch_lr={self.arch_lr!r} must be a finite number, 0 or more")
        if self.select not in SELECTIONS:
            raise RecipeError(f"select={self.select!r} is not a selection rule (allowed: {', '.join(SELECTIONS)})")
        for name in ("pt_tune_epochs", "pt_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise RecipeError(f"one-shot setting {name}={getattr(self, name)!r} must be a whole number, 0 or more")
        if not 0 < self.tau_min <= self.tau_max:
            raise RecipeError(f"tau_min={self.tau_min}, tau_max={self.tau_max}: need 0 < tau_min <= tau_max")
        for name, n in (self.epochs or {}).items():
            if name not in STRATEGIES or not isinstance(n, int) or n < 1:
                raise RecipeError(f"epochs: {name}={n!r} (strategies {', '.join(STRATEGIES)}, at least 1 epoch)")

    def check_strategies(self, strategies: Sequence[str]) -> None:
        """Refuse a selection rule that a strategy cannot use (before any search runs)."""
        if self.select == "perturbation":
            other = [s for s in strategies if s not in MIXTURE_STRATEGIES]
            if other:
                raise RecipeError(f"select=perturbation needs a supernet trained as a mixture of all ops; "
                                  f"{', '.join(other)} do(es) not train one (allowed with it: "
                                  f"{', '.join(MIXTURE_STRATEGIES)})")

    def epochs_of(self, strategy: str) -> int:
        return {**CPU_EPOCHS, **(self.epochs or {})}[strategy]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["epochs"] = {s: self.epochs_of(s) for s in STRATEGIES}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<config>") -> OneShotConfig:
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: one-shot settings must be a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        for key in data:
            if key not in names:
                raise RecipeError(f"{source}: unknown one-shot setting {key!r} (allowed: {', '.join(sorted(names))})")
        try:
            return replace(cls(), **data)
        except TypeError as e:
            raise RecipeError(f"{source}: {e}") from None


#: Search epochs of the CPU protocol: a few minutes per search on one idle thread (DARTS runs all five ops
#: on every edge, about 5x the cost of a single-path step, so it gets fewer epochs; so does DrNAS, which mixes all
#: five ops under a Dirichlet sample). DARTS- gets 8, the budget of the DrNAS and DARTS runs at 8 epochs, fixed before
#: any DARTS- search ran (not tuned).
CPU_EPOCHS = {"darts": 2, "gdas": 5, "enas": 5, "spos": 6, "drnas": 2, "darts_minus": 8}

#: NAS-Bench-201's own search protocol (C = 16, N = 5, 50 epochs on the full halves, batch 64, arch lr 3e-4);
#: DrNAS with its own NAS-Bench-201 setting: 100 epochs, L2 regulariser 1e-3 (the defaults above).
GPU_PROTOCOL = {
    "C": 16, "N": 5, "epochs": {**{s: 50 for s in STRATEGIES}, "drnas": 100}, "train_images": 0, "valid_images": 0,
    "batch_size": 64, "arch_lr": 3e-4, "eval_images": 5_000, "bn_batches": 4, "threads": 4, "device": "cuda",
}
