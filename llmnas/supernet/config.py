"""The ``supernet:`` section of a recipe: how ``llmnas supernet train`` trains the weight-shared supernet."""

from __future__ import annotations

from dataclasses import dataclass

from llmnas.errors import RecipeError

#: the decisions a supernet may be split on (``supernet.split``): each is one value per architecture
SPLIT_DECISIONS = ("d_model", "n_layers", "pos", "norm", "tie_embeddings")
#: the per-layer decisions whose values may get weights of their own (``supernet.unshare``), and which weights
UNSHARE_DECISIONS = {"n_heads": "query and key projections", "attention": "query and key projections",
                     "activation": "FFN up and down projections"}


@dataclass(frozen=True, kw_only=True)
class SupernetConfig:
    """The sandwich rule, distillation and progressive shrinking (the budget is ``supernet.train``)."""

    largest: bool = True
    """Train the largest subnet at every step (by parameters; under the recipe's constraints)."""
    smallest: bool = True
    """Train the smallest subnet at every step."""
    random_subnets: int = 2
    """Uniformly random subnets per step, beside the largest and smallest (the sandwich rule)."""
    distill: float = 0.0
    """In-place distillation: every other subnet's loss is ``(1 - distill) * CE + distill * KL(teacher ||
    subnet)``, the teacher being the largest subnet's (detached) predictions at the same step. Needs
    ``largest``."""
    shrink_stages: int = 1
    """Progressive shrinking: the run is cut into this many equal stages; in stage ``s`` (from 1) the random
    subnets are drawn among architectures with at least as many parameters as the ``1 - s / stages``
    quantile of a sample of the space: the first stage trains the largest ``1 / stages`` of the space, the
    last stage all of it. 1: off."""
    pool_size: int = 2000
    """Random architectures sampled once (from ``seed``) to find the largest and smallest subnets under the
    constraints and the size quantiles of progressive shrinking."""
    seed: int = 0
    """Seeds the architectures of every step: step ``t`` draws from ``(seed, t)``, the same on every process
    and after a resume."""
    checkpoint_interval: int = 0
    """Optimizer steps between checkpoints (weights, optimizer, step); 0: at the end only. A run started
    again resumes from the last one."""
    split: str | None = None
    """Few-shot NAS (Zhao et al., ICML 2021): one supernet per value of this space-wide decision (one of
    :data:`SPLIT_DECISIONS` with two or more choices in the space), each trained with the whole
    ``supernet.train`` budget on the subnets that take that value; a subnet is scored by its own value's
    supernet. Subnets that differ in that decision no longer share weights, at K times the training cost
    for K values. None: one supernet."""
    balance: str | tuple[str, ...] | None = None
    """Draw each random subnet's value of this space-wide decision (one of :data:`SPLIT_DECISIONS`) uniformly
    among its feasible values first, then the other decisions uniformly given it. Under a parameter cap, uniform
    decisions leave the widest models rare (5 % of ``tiny_char``'s under the baby-GPT cap are ``d_model`` 192), so
    the channels only they use are seldom trained; ``balance: d_model`` trains every width equally often.
    A list balances several decisions in turn: ``[d_model, n_layers]`` draws the width uniformly among the
    feasible widths, then the depth uniformly among the depths feasible at that width (under a cap a drawn depth
    is rejected more often the deeper it is, so the last layers are seldom trained), then the rest.
    None: every decision uniform (then the constraints)."""
    unshare: tuple[str, ...] = ()
    """Per-layer decisions (of :data:`UNSHARE_DECISIONS`) whose values stop sharing weights: ``n_heads`` and
    ``attention`` give every head count and attention kind (full, sliding) query and key projections of their
    own in every layer (the head count changes how those rows are split, so shared rows serve different
    functions); ``activation`` gives GELU, ReLU² and SwiGLU their own FFN up and down projections (a MoE layer's
    experts stay shared). Same training budget, more weights. Empty: the weight sharing of the module docstring
    of :mod:`llmnas.supernet.model`."""
    out: str | None = None
    """Folder of the supernet; default ``<run_dir>/<study>/supernet``."""

    def __post_init__(self) -> None:
        for name in ("random_subnets", "checkpoint_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RecipeError(f"supernet.{name}={value!r}: must be a non-negative integer")
        for name in ("shrink_stages", "pool_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"supernet.{name}={value!r}: must be a positive integer")
        if not self.largest + self.smallest + self.random_subnets:
            raise RecipeError("supernet: no subnet to train: set largest, smallest or random_subnets > 0")
        if not 0.0 <= self.distill <= 1.0:
            raise RecipeError(f"supernet.distill={self.distill!r}: must be in [0, 1]")
        if self.distill and not self.largest:
            raise RecipeError("supernet.distill needs supernet.largest: true (the largest subnet is the teacher)")
        if self.split is not None and self.split not in SPLIT_DECISIONS:
            raise RecipeError(f"supernet.split={self.split!r}: must be one of {', '.join(SPLIT_DECISIONS)} (or absent)")
        if isinstance(self.balance, (list, tuple)):  # one decision listed alone is that decision
            balance = tuple(self.balance)
            object.__setattr__(self, "balance", balance[0] if len(balance) == 1 else balance)
        shown = list(self.balance) if isinstance(self.balance, tuple) else self.balance  # as the YAML wrote it
        for decision in self.balanced_decisions:
            if not isinstance(decision, str) or decision not in SPLIT_DECISIONS:
                raise RecipeError(f"supernet.balance={shown!r}: {decision!r} is not one of "
                                  f"{', '.join(SPLIT_DECISIONS)} (give one of them, a list of them, or nothing)")
            if decision == self.split:
                raise RecipeError(f"supernet.balance={shown!r}: the supernet is split on {decision!r} already "
                                  "(each part takes one value)")
        if len(set(self.balanced_decisions)) < len(self.balanced_decisions) or self.balance == ():
            raise RecipeError(f"supernet.balance={shown!r}: list each decision once (and at least one)")
        unshare = self.unshare
        if isinstance(unshare, str):
            unshare = (unshare,)
        if not isinstance(unshare, (list, tuple)):
            raise RecipeError(f"supernet.unshare={self.unshare!r}: give a list of {', '.join(UNSHARE_DECISIONS)}")
        for decision in unshare:
            if decision not in UNSHARE_DECISIONS:
                raise RecipeError(f"supernet.unshare={list(unshare)!r}: {decision!r} is not one of "
                                  f"{', '.join(UNSHARE_DECISIONS)} (the per-layer decisions whose values can have "
                                  "weights of their own)")
        if len(set(unshare)) < len(unshare):
            raise RecipeError(f"supernet.unshare={list(unshare)!r}: list each decision once")
        object.__setattr__(self, "unshare", tuple(d for d in UNSHARE_DECISIONS if d in unshare))  # canonical order
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise RecipeError(f"supernet.seed={self.seed!r}: must be a non-negative integer")

    @property
    def balanced_decisions(self) -> tuple[str, ...]:
        """The decisions of ``balance``, in the order they are drawn."""
        if self.balance is None:
            return ()
        return self.balance if isinstance(self.balance, tuple) else (self.balance,)

    @property
    def n_subnets(self) -> int:
        return int(self.largest) + int(self.smallest) + self.random_subnets
