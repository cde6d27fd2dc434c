"""The one-shot strategies over one :class:`~llmnas.vision.oneshot.supernet.CellSuperNet`.

Each strategy takes weight steps on batches of the training half and, where it has architecture
parameters, updates them on batches of the validation half; :meth:`Strategy.finish` names the found cell.

- :class:`Darts`: first-order DARTS (Liu et al., 2019): softmax-weighted sum of all ops on every edge;
  the logits take Adam steps on the validation loss, the weights SGD steps on the training loss; the
  found cell is the argmax per edge (``none`` included, as NAS-Bench-201 does).
- :class:`DartsMinus`: DARTS- (Chu et al., ICLR 2021): DARTS with an auxiliary skip connection on every edge,
  outside the searched ops, whose weight ``beta`` decays linearly from ``aux_skip`` to 0 over the search. The
  auxiliary path carries the gradient a skip edge would, so ``skip_connect``'s own weight no longer gains from
  that advantage (the mechanism behind DARTS's collapse to parameter-free cells); at the end ``beta`` is 0 and
  the supernet is DARTS's.
- :class:`Gdas`: GDAS (Dong & Yang, 2019): one op per edge drawn by a hard Gumbel-softmax with a
  temperature annealed from ``tau_max`` to ``tau_min``; straight-through gradients reach every logit.
- :class:`Enas`: ENAS (Pham et al., 2018): an LSTM controller -- llmnas's
  :class:`~llmnas.samplers.ReinforceSampler` on an in-memory Optuna study -- samples the path each weight
  step trains; every ``controller_every`` steps it is rewarded with a sampled cell's accuracy on one
  validation batch; the found cell is the best of ``final_samples`` draws from the trained controller.
- :class:`Spos`: single-path one-shot (Guo et al., 2020): uniform random paths during training; then
  regularized evolution (:class:`~llmnas.samplers.RegularizedEvolutionSampler`) searches with inherited
  weights and per-cell BatchNorm recalibration.
- :class:`Drnas`: DrNAS (Chen et al., ICLR 2021): each edge's op weights are a Dirichlet random variable
  with concentration ``beta = elu(alpha) + 1``; every forward (weight and architecture step) mixes all five
  ops under a reparameterised sample, the concentration takes Adam steps on the validation loss plus a
  regulariser on ``beta`` (L2 toward the uniform anchor ``beta = 1``, scale 1e-3, or a KL to ``Dir(1)``);
  the found cell is the argmax of the Dirichlet mean per edge. (DrNAS's progressive learning with partial
  channels is not implemented: the CPU supernet is small enough to run all channels.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from torch import nn

from llmnas.samplers import RegularizedEvolutionSampler, ReinforceSampler
from llmnas.space.nb201 import EDGES, N_CELLS, OPS, NB201Cell, NB201Space
from llmnas.vision.oneshot.config import OneShotConfig
from llmnas.vision.oneshot.evaluate import CellScorer
from llmnas.vision.oneshot.supernet import Arch, AuxSkip, CellSuperNet, Hard

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm (batch statistics) without touching the running statistics."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    was_training = net.training
    for m in bns:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    net.train()
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        net.train(was_training)


def argmax_cell(weights: torch.Tensor) -> NB201Cell:
    """The op of largest weight on each edge."""
    return NB201Cell(tuple(OPS[int(i)] for i in weights.argmax(-1)))


class Strategy:
    """One search's state: the supernet's weight optimizer plus whatever the strategy learns."""

    name: ClassVar[str]
    uses_valid: ClassVar[bool] = True

    def __init__(self, net: CellSuperNet, cfg: OneShotConfig, seed: int, total_steps: int) -> None:
        self.net, self.cfg, self.seed, self.total_steps = net, cfg, seed, total_steps
        self.optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                         weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.lr_override: float | None = None
        """A constant learning rate for the weights instead of the cosine schedule (training after the search)."""

    # ------------------------------------------------------------------ shared pieces
    def progress(self) -> float:
        return self.steps / max(1, self.total_steps)

    def set_lr(self) -> None:
        cfg = self.cfg
        if self.lr_override is not None:
            lr = self.lr_override
        else:
            lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, self.progress())))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def weight_step(self, batch: Batch, arch: Arch) -> tuple[float, float]:
        """One SGD step of the shared weights on a training batch; returns (loss, accuracy %)."""
        x, y = batch
        self.set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.net(x, arch)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach()), 100.0 * float((logits.argmax(-1) == y).float().mean())

    # ------------------------------------------------------------------ what strategies define
    def step(self, train: Batch, valid: Batch | None) -> tuple[float, float]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return {}

    def finish(self, scorer: CellScorer) -> tuple[NB201Cell, dict[str, Any]]:
        raise NotImplementedError


class _ArchLogits(Strategy):
    """DARTS and GDAS: ``(6, 5)`` logits, Adam on the validation loss (NAS-Bench-201's settings)."""

    def __init__(self, net: CellSuperNet, cfg: OneShotConfig, seed: int, total_steps: int) -> None:
        super().__init__(net, cfg, seed, total_steps)
        init = 1e-3 * torch.randn(len(EDGES), len(OPS), generator=self.generator)
        self.alpha = nn.Parameter(init.to(cfg.device))
        self.arch_optimizer = torch.optim.Adam([self.alpha], lr=cfg.arch_lr, betas=(0.5, 0.999),
                                               weight_decay=cfg.arch_weight_decay)
        self.projected: dict[int, int] = {}
        """Edges already fixed to one op (perturbation selection): ``edge -> op index``."""

    def project(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights`` with the rows of the fixed edges replaced by their one-hot op (no gradient there)."""
        if not self.projected:
            return weights
        fixed = torch.zeros_like(weights)
        mask = torch.zeros(weights.shape[0], 1, dtype=torch.bool, device=weights.device)
        for e, k in self.projected.items():
            fixed[e, k] = 1.0
            mask[e] = True
        return torch.where(mask, fixed, weights)

    def mixture(self) -> torch.Tensor:
        """The op weights the supernet runs with outside a stochastic step (fixed edges one-hot)."""
        return self.project(self.op_weights())

    def arch_step(self, batch: Batch, arch: Arch) -> None:
        """One Adam step of the logits on a validation batch; the shared weights get no gradient from it.
        With ``arch_lr`` 0 the logits stay where they started and the step is skipped."""
        if self.cfg.arch_lr == 0:
            return
        x, y = batch
        loss = F.cross_entropy(self.net(x, arch), y)
        penalty = self.arch_penalty()
        if penalty is not None:
            loss = loss + penalty
        (grad,) = torch.autograd.grad(loss, [self.alpha])
        self.arch_optimizer.zero_grad(set_to_none=True)
        self.alpha.grad = grad
        self.arch_optimizer.step()

    def arch_penalty(self) -> torch.Tensor | None:
        """A term added to the validation loss of the architecture step (none for DARTS and GDAS)."""
        return None

    def op_weights(self) -> torch.Tensor:
        return self.alpha.detach().softmax(-1)

    def snapshot(self) -> dict[str, Any]:
        return {"weights": [[round(float(w), 5) for w in row] for row in self.op_weights()]}

    def finish(self, scorer: CellScorer) -> tuple[NB201Cell, dict[str, Any]]:
        weights = self.op_weights()
        return argmax_cell(weights), {"final_weights": weights.tolist()}


class Darts(_ArchLogits):
    name = "darts"

    def step(self, train: Batch, valid: Batch | None) -> tuple[float, float]:
        assert valid is not None
        self.arch_step(valid, self.project(self.alpha.softmax(-1)))
        return self.weight_step(train, self.mixture())


class DartsMinus(Darts):
    name = "darts_minus"

    def beta(self) -> float:
        """The auxiliary skip's weight: ``aux_skip`` at the start, linearly down to 0 at the end (0 after it)."""
        return self.cfg.aux_skip * max(0.0, 1.0 - self.progress())

    def step(self, train: Batch, valid: Batch | None) -> tuple[float, float]:
        assert valid is not None
        beta = self.beta()
        self.arch_step(valid, AuxSkip(self.project(self.alpha.softmax(-1)), beta))
        return self.weight_step(train, AuxSkip(self.mixture(), beta))

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "aux_skip": round(self.beta(), 4)}


class Gdas(_ArchLogits):
    name = "gdas"

    def tau(self) -> float:
        return self.cfg.tau_max - (self.cfg.tau_max - self.cfg.tau_min) * self.progress()

    def sample(self) -> Hard:
        logp = self.alpha.log_softmax(-1)
        while True:
            gumbel = -torch.empty(self.alpha.shape).exponential_(generator=self.generator).log().to(self.alpha.device)
            soft = ((logp + gumbel) / self.tau()).softmax(-1)
            if torch.isfinite(soft).all():
                break
        index = soft.argmax(-1)
        hard = F.one_hot(index, len(OPS)).to(soft.dtype) - soft.detach() + soft
        return Hard(hard, tuple(int(i) for i in index))

    def step(self, train: Batch, valid: Batch | None) -> tuple[float, float]:
        assert valid is not None
        self.arch_step(valid, self.sample())
        sample = self.sample()
        return self.weight_step(train, Hard(sample.weights.detach(), sample.index))

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "tau": round(self.tau(), 4)}


class Drnas(_ArchLogits):
    """DrNAS: ``alpha`` parameterises a Dirichlet per edge; op weights are samples from it."""

    name = "drnas"

    def __init__(self, net: CellSuperNet, cfg: OneShotConfig, seed: int, total_steps: int) -> None:
        super().__init__(net, cfg, seed, total_steps)
        # DrNAS regularises the concentration with its own term (arch_penalty), not with Adam's weight decay
        for group in self.arch_optimizer.param_groups:
            group["weight_decay"] = 0.0
        self.anchor = torch.ones_like(self.alpha)
        """DrNAS's anchor: the uniform Dirichlet ``Dir(1)``, the concentration at ``alpha = 0``."""

    def concentration(self) -> torch.Tensor:
        """``beta = elu(alpha) + 1`` (positive; differentiable in ``alpha``)."""
        return F.elu(self.alpha) + 1

    def sample(self) -> torch.Tensor:
        """``(6, 5)`` op weights drawn by ``Dirichlet(beta).rsample()`` (pathwise gradient to ``alpha``), from
        the global torch generator (``run_search`` seeds it; ``torch._sample_dirichlet`` takes no other)."""
        return torch.distributions.Dirichlet(self.concentration()).rsample()

    def arch_penalty(self) -> torch.Tensor | None:
        scale = self.cfg.drnas_reg_scale
        if scale == 0:
            return None
        beta = self.concentration()
        if self.cfg.drnas_reg == "kl":
            dist = torch.distributions
            return scale * dist.kl_divergence(dist.Dirichlet(beta), dist.Dirichlet(self.anchor)).sum()
        # gradient scale * (beta - 1): the public code's Adam weight decay on alpha wherever alpha >= 0
        return 0.5 * scale * (beta - self.anchor).pow(2).sum()

    def op_weights(self) -> torch.Tensor:
        """The Dirichlet mean ``beta / sum(beta)`` per edge (its argmax is the found cell)."""
        beta = self.concentration().detach()
        return beta / beta.sum(-1, keepdim=True)

    def step(self, train: Batch, valid: Batch | None) -> tuple[float, float]:
        assert valid is not None
        if self.cfg.arch_lr != 0:  # (a skipped step draws no sample: the weight step's draws stay in sequence)
            self.arch_step(valid, self.project(self.sample()))
        with torch.no_grad():
            weights = self.sample()  # a fresh sample for the weight step, no graph to alpha
        return self.weight_step(train, self.project(weights))

    def snapshot(self) -> dict[str, Any]:
        beta = self.concentration().detach()
        return {**super().snapshot(), "concentration": [[round(float(b), 5) for b in row] for row in beta]}

    def finish(self, scorer: CellScorer) -> tuple[NB201Cell, dict[str, Any]]:
        cell, extra = super().finish(scorer)
        return cell, {**extra, "final_concentration": self.concentration().detach().tolist()}


class Enas(Strategy):
    name = "enas"

    def __init__(self, net: CellSuperNet, cfg: OneShotConfig, seed: int, total_steps: int) -> None:
        super().__init__(net, cfg, seed, total_steps)
        self.space = NB201Space()
        self.sampler = ReinforceSampler(space=self.space, controller="lstm", learning_rate=cfg.controller_lr,
                                        entropy_weight=cfg.controller_entropy, avoid_repeats=False, seed=seed)
        self.study = optuna.create_study(direction="maximize", sampler=self.sampler, study_name=f"enas-{seed}")
        self.rewards: list[float] = []

    def policy_cell(self) -> NB201Cell:
        """A cell drawn from the controller as it stands (no trial: weight steps do not train it)."""
        policy = self.sampler.policy_state(self.study, self.space).policy
        actions = policy.sample(self.rng)
        params = {name: ch[a] for (name, ch), a in zip(self.space.choices().items(), actions, strict=True)}
        return self.space.decode(params)

    def step(self, train: Batch, valid: Batch | None) -> tuple[float, float]:
        assert valid is not None
        out = self.weight_step(train, self.policy_cell())
        if self.steps % self.cfg.controller_every == 0:
            trial = self.study.ask()
            cell = self.space.suggest(trial)
            x, y = valid
            with torch.no_grad(), batch_statistics(self.net):
                reward = 100.0 * float((self.net(x, cell).argmax(-1) == y).float().mean())
            self.study.tell(trial, reward)
            self.rewards.append(reward)
        return out

    def snapshot(self) -> dict[str, Any]:
        recent = self.rewards[-20:]
        return {"reward": round(float(np.mean(recent)), 3) if recent else None, "trials": len(self.rewards)}

    def finish(self, scorer: CellScorer) -> tuple[NB201Cell, dict[str, Any]]:
        scored = []
        for _ in range(self.cfg.final_samples):
            cell = self.policy_cell()
            scored.append((scorer(cell), cell))
        best = max(scored, key=lambda s: s[0])  # first of the tied best
        return best[1], {"final_samples": [{"cell": c.to_str(), "acc": a} for a, c in scored],
                         "rewards": self.rewards}


class Spos(Strategy):
    name = "spos"
    uses_valid = False

    def step(self, train: Batch, valid: Batch | None) -> tuple[float, float]:
        return self.weight_step(train, NB201Cell.from_code(int(self.rng.integers(N_CELLS))))

    def finish(self, scorer: CellScorer) -> tuple[NB201Cell, dict[str, Any]]:
        space = NB201Space()
        sampler = RegularizedEvolutionSampler(space=space, population_size=self.cfg.population_size,
                                              sample_size=self.cfg.sample_size, seed=self.seed)
        study = optuna.create_study(direction="maximize", sampler=sampler, study_name=f"spos-{self.seed}")
        study.optimize(lambda trial: scorer(space.suggest(trial)), n_trials=self.cfg.search_trials)
        best = space.decode(study.best_trial.params)
        trials = [{"cell": space.decode(t.params).to_str(), "acc": t.value} for t in study.trials]
        cells = fidelity_cells(self.cfg.fidelity_cells, self.cfg.fidelity_seed)
        fidelity = [{"cell": c.to_str(), "acc": scorer(c)} for c in cells]
        return best, {"search": trials, "fidelity": fidelity}


def fidelity_cells(n: int, seed: int) -> list[NB201Cell]:
    """``n`` distinct uniformly random cells, fixed by ``seed`` (not by the run's seed)."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(N_CELLS, size=min(n, N_CELLS), replace=False)
    return [NB201Cell.from_code(int(c)) for c in codes]


STRATEGY_CLASSES: dict[str, type[Strategy]] = {s.name: s for s in (Darts, Gdas, Enas, Spos, Drnas, DartsMinus)}
