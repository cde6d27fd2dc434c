"""Training the supernet: the sandwich rule under Accelerate, with checkpoints and resume.

Every optimizer step trains several subnets on the same micro-batches: the largest, the smallest and
``random_subnets`` random ones (Yu et al.'s sandwich rule), optionally taught by the largest (in-place
distillation) and optionally drawn from a growing part of the space (progressive shrinking). Their losses
are averaged into one backward pass per micro-batch, so gradient accumulation, DDP and DeepSpeed see an
ordinary model: one gradient all-reduce per optimizer step, and ``gradient_accumulation_steps`` is the
recipe's ``grad_accum`` as for any training.

Distributed correctness:

- step ``t``'s architectures come from ``(seed, t)`` alone, so every process trains the same subnets
  (and a resumed run the same ones as an uninterrupted run);
- a subnet leaves some weights untouched (other FFN kinds, deeper layers); each step's loss adds zero
  times one element of every weight, so every weight gets a (zero) gradient and DDP's reducer never
  waits for one that will not come ("Expected to have finished reduction in the prior iteration");
- the main process's clock, a failure on any process and NaN losses are agreed as in
  :mod:`llmnas.train.ranks`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from llmnas import interrupt
from llmnas.data import TokenData
from llmnas.errors import RecipeError
from llmnas.space.arch import Architecture
from llmnas.space.transformer import TransformerSpace
from llmnas.supernet.checkpoint import (
    STATE,
    TOKENIZER,
    checkpoint_dir,
    latest_checkpoint,
    publish,
    read_meta,
    write_weights,
)
from llmnas.supernet.config import SupernetConfig
from llmnas.supernet.dims import space_id, space_record
from llmnas.supernet.evaluate import evaluate_subnet
from llmnas.supernet.model import SuperNet
from llmnas.supernet.split import (
    by_part,
    feasible_draw,
    feasible_values,
    is_split,
    part_folder,
    read_manifest,
    split_values,
    write_manifest,
)
from llmnas.train.loop import (
    TrainConfig,
    agreed_update,
    check_accelerator,
    lr_at,
    make_optimizer,
    total_steps,
    training_loader,
)
from llmnas.train.ranks import from_main, run_guarded


# ---------------------------------------------------------------------- which subnets each step trains
def size_key(arch: Architecture) -> tuple[int, int]:
    """Order of subnets by size: parameters, then active parameters (top-k of a MoE)."""
    counts = arch.param_counts()
    return counts.total, counts.active


def extreme(space: TransformerSpace, start: dict[str, Any], sign: int, keep: str | None = None) -> Architecture:
    """The largest (``sign=1``) or smallest (``sign=-1``) architecture reachable from ``start`` by changing
    one decision at a time (never ``keep``) while the constraints hold (coordinate ascent on :func:`size_key`)."""
    params = dict(start)
    best = size_key(space.decode(params))
    improved = True
    while improved:
        improved = False
        for name, options in space.choices().items():
            if name == keep:
                continue
            for value in options:
                trial = {**params, name: value}
                if not space.is_feasible(trial):
                    continue
                key = size_key(space.decode(trial))
                if (key > best) if sign > 0 else (key < best):
                    params, best, improved = trial, key, True
    return space.decode(params)


class SandwichPlan:
    """The architectures of every step, a pure function of ``(cfg.seed, step)`` and the step's progress.

    With ``part`` (a decision and its value: one part of a split supernet), every architecture takes that
    value: the random subnets are uniform over that part of the space, the largest and smallest are its own.
    """

    def __init__(self, space: TransformerSpace, cfg: SupernetConfig, part: tuple[str, Any] | None = None) -> None:
        self.space, self.cfg, self.part = space, cfg, part
        self._feasible: dict[tuple, list[Any]] = {}
        for decision in cfg.balanced_decisions:  # each must be a decision of the space (a clear error if not)
            values = split_values(space, decision, "supernet.balance", dict([part]) if part else None)
            if decision == cfg.balanced_decisions[0]:  # the first is drawn given the part alone
                self._feasible[self._key(decision, dict([part]) if part else {})] = values
        rng = np.random.default_rng([cfg.seed, 1 << 20])
        pool = [self._draw(rng) for _ in range(cfg.pool_size)]
        archs = [space.decode(p) for p in pool]
        sizes = [size_key(a) for a in archs]
        order = range(len(pool))
        keep = part[0] if part else None
        self.largest = extreme(space, pool[max(order, key=sizes.__getitem__)], 1, keep)
        self.smallest = extreme(space, pool[min(order, key=sizes.__getitem__)], -1, keep)
        self.pool = archs
        self.pool_params = np.array([s[0] for s in sizes])

    def threshold(self, progress: float) -> int:
        """Fewest parameters a random subnet may have at ``progress`` (0..1) of the run."""
        stages = self.cfg.shrink_stages
        if stages == 1:
            return 0
        stage = min(stages, int(progress * stages) + 1)
        return int(np.quantile(self.pool_params, 1.0 - stage / stages))

    def archs(self, step: int, progress: float) -> list[tuple[str, Architecture]]:
        """``(role, architecture)`` pairs of ``step``, the largest first (the distillation teacher)."""
        cfg, out = self.cfg, []
        if cfg.largest:
            out.append(("largest", self.largest))
        if cfg.smallest:
            out.append(("smallest", self.smallest))
        rng = np.random.default_rng([cfg.seed, step])
        floor = self.threshold(progress)
        for _ in range(cfg.random_subnets):
            arch = None
            for _ in range(100):
                candidate = self.space.decode(self._draw(rng))
                if candidate.param_counts().total >= floor:
                    arch = candidate
                    break
            if arch is None:  # rare draws near the top: take a large one from the pool
                big = np.flatnonzero(self.pool_params >= floor)
                arch = self.pool[int(big[rng.integers(len(big))])]
            out.append(("random", arch))
        return out

    def feasible(self, decision: str, fixed: dict[str, Any]) -> list[Any]:
        """The values of ``decision`` some feasible architecture takes with the ``fixed`` decisions (cached)."""
        key = self._key(decision, fixed)
        if key not in self._feasible:
            self._feasible[key] = feasible_values(self.space, decision, fixed)
        return self._feasible[key]

    @staticmethod
    def _key(decision: str, fixed: dict[str, Any]) -> tuple:
        return (decision, *sorted((k, str(v)) for k, v in fixed.items()))

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Uniformly random feasible decisions (within the part, if any); with ``cfg.balance``, each balanced
        decision's value in turn, uniformly among the values feasible given those drawn before it, then the rest
        uniformly given them."""
        fixed = dict([self.part]) if self.part else {}
        for decision in self.cfg.balanced_decisions:
            values = self.feasible(decision, fixed)
            fixed[decision] = values[int(rng.integers(len(values)))]
        if not fixed:
            return self.space.sample_params(rng)
        params = feasible_draw(self.space, fixed, rng=rng)
        if params is None:
            what = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
            raise RecipeError(f"supernet: no architecture with {what} meets the recipe's constraints in 20,000 "
                              "random draws")
        return params


# ---------------------------------------------------------------------- the run
@dataclass
class SupernetRun:
    """What ``llmnas supernet train`` did."""

    path: Path
    """The final checkpoint folder."""
    steps: int
    tokens: int
    """Training tokens fed to subnets, over all processes and subnets."""
    train_seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    """Mean training loss of each role (largest, smallest, random) over the last logged steps."""
    scores: dict[str, float] = field(default_factory=dict)
    """Validation loss of the largest and smallest subnets at the end."""
    resumed_from: int | None = None
    finished: bool = True
    """Whether every step of the budget was trained (False after ``stop_after``)."""
    parts: int = 1
    """Supernets trained (``supernet.split``: one per value, each ``steps`` long; ``tokens`` and
    ``train_seconds`` are their sums)."""


def run_record(space: TransformerSpace, cfg: SupernetConfig, train_cfg: TrainConfig, data: TokenData) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    sandwich = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("checkpoint_interval", "out")}
    if not cfg.unshare:  # as recorded before supernet.unshare existed: those supernets still resume
        del sandwich["unshare"]
    return {
        "space": space_id(space),
        "constraints": space.describe()["constraints"],
        "data": data.meta.cache_key,
        "supernet": sandwich,
        "train": dataclasses.asdict(train_cfg),
    }


def _check_resume(record: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    stored = meta.get("record", {})
    fresh = json.loads(json.dumps(record, default=str))
    changed = [k for k in fresh if fresh[k] != stored.get(k)]
    if changed:
        detail = []
        for k in changed:
            if isinstance(fresh[k], dict) and isinstance(stored.get(k), dict):
                keys = sorted(x for x in fresh[k].keys() | stored[k].keys() if fresh[k].get(x) != stored[k].get(x))
                detail.append(f"{k}.{{{', '.join(keys)}}}" if keys else k)
            else:
                detail.append(k)
        raise RecipeError(
            f"{path} was trained with a different {', '.join(detail)}; resuming would mix two runs: train into "
            "another folder (--out, or supernet.out) or resume with the original recipe"
        )


def train_supernet(
    space: TransformerSpace,
    data: TokenData,
    cfg: SupernetConfig,
    train_cfg: TrainConfig,
    accelerator: Accelerator,
    out: str | Path,
    *,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> SupernetRun:
    """Train (or resume) the supernet of ``space`` into the folder ``out``; with ``cfg.split``, one supernet
    per value of that decision, one after the other, into ``out/<decision>-<value>/`` (:mod:`llmnas.supernet.split`).

    Args:
        stop_after: end (with a checkpoint) after this optimizer step, as if killed there (tests); with a
            split, steps count over the parts in order (part ``k``'s step ``t`` is step ``k * budget + t``).
        log: where progress lines go (default: ``accelerator.print``).

    Raises:
        RecipeError: ``out`` holds a supernet trained with another space, data, settings or split.
        TrainingDiverged: a loss became NaN or infinite (the last checkpoint stays).
    """
    log = log or accelerator.print
    out = Path(out)
    if is_split(out) and cfg.split is None:
        raise RecipeError(f"{out} holds a supernet split on {read_manifest(out)['decision']!r} and the recipe has no "
                          "supernet.split: train into another folder (--out, or supernet.out) or keep the split")
    if cfg.split is None:
        return _train_part(space, data, cfg, train_cfg, accelerator, out, None, stop_after, log)
    if latest_checkpoint(out) is not None:
        raise RecipeError(f"{out} holds a supernet that is not split and the recipe has supernet.split="
                          f"{cfg.split!r}: train into another folder (--out, or supernet.out)")
    values = split_values(space, cfg.split)
    if accelerator.is_main_process:
        write_manifest(out, cfg.split, values)
    accelerator.wait_for_everyone()
    runs: list[SupernetRun] = []
    budget = total_steps(train_cfg, space.max_seq_len, accelerator.num_processes) or 0
    for i, value in enumerate(values):
        log(f"part {i + 1}/{len(values)}: {cfg.split}={value}")
        stop = None if stop_after is None else stop_after - i * budget
        run = _train_part(space, data, cfg, train_cfg, accelerator, out / part_folder(cfg.split, value),
                          (cfg.split, value), stop, log)
        runs.append(run)
        if not run.finished:
            break
    done = values[:len(runs)]
    return SupernetRun(path=out, steps=runs[-1].steps, tokens=sum(r.tokens for r in runs),
                       train_seconds=sum(r.train_seconds for r in runs), losses=by_part(done, [r.losses for r in runs]),
                       scores=by_part(done, [r.scores for r in runs]), resumed_from=runs[0].resumed_from,
                       finished=len(runs) == len(values) and runs[-1].finished, parts=len(values))


def _train_part(space: TransformerSpace, data: TokenData, cfg: SupernetConfig, train_cfg: TrainConfig,
                accelerator: Accelerator, out: Path, part: tuple[str, Any] | None, stop_after: int | None,
                log: Callable[[str], None]) -> SupernetRun:
    """Train (or resume) one supernet (of the whole space, or of one ``part`` of a split one) into ``out``."""
    check_accelerator(accelerator, train_cfg)
    block = space.max_seq_len
    world = accelerator.num_processes
    steps_budget = total_steps(train_cfg, block, world)
    record = run_record(space, cfg, train_cfg, data)
    if part is not None:
        record["part"] = {part[0]: part[1]}
    latest = latest_checkpoint(out)
    meta = read_meta(latest) if latest is not None else None
    if meta is not None:
        _check_resume(record, meta, latest)  # type: ignore[arg-type]
        if meta.get("finished"):
            log(f"{latest}: already trained ({meta['step']} steps); nothing to do")
            return SupernetRun(path=latest, steps=meta["step"], tokens=meta["tokens"],  # type: ignore[arg-type]
                               train_seconds=meta["train_seconds"], losses=meta.get("losses", {}),
                               scores=meta.get("scores", {}), resumed_from=meta["step"])
    plan = SandwichPlan(space, cfg, part)

    def build() -> tuple[SuperNet, torch.optim.Optimizer, Any]:
        set_seed(train_cfg.seed)
        net = SuperNet(space, dropout=train_cfg.dropout, unshare=cfg.unshare)
        loader = training_loader(data, train_cfg, block, steps_budget, world)
        # Starting an iterator over the loader draws a seed; from a generator of its own, not from torch's
        # RNG, which a resumed run restores before its first batch (dropout would differ from the run's).
        loader.generator = torch.Generator()
        return net, make_optimizer(net, train_cfg), loader

    net, optimizer, loader = run_guarded(accelerator, build)
    net, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    log(f"supernet of {space.name!r}: {accelerator.unwrap_model(net).num_parameters():,} weights; largest subnet "
        f"{plan.largest.summary()}, smallest {plan.smallest.summary()}; {cfg.n_subnets} subnets per step")
    step, tokens, train_seconds = 0, 0, 0.0
    if meta is not None:
        accelerator.load_state(str(latest / STATE))  # type: ignore[operator]
        step, tokens, train_seconds = meta["step"], meta["tokens"], meta["train_seconds"]
        log(f"resuming {latest} at step {step}")
        loader = accelerator.skip_first_batches(loader, step * train_cfg.grad_accum)
    resumed_from = step if meta is not None else None
    batches = iter(loader)
    tokens_per_micro = train_cfg.batch_size * block * world * cfg.n_subnets
    recent: dict[str, list[float]] = {}
    net.train()
    started = time.perf_counter() - train_seconds
    stopped = False

    def snapshot(scores: dict[str, float]) -> dict[str, Any]:
        return _meta(record, space, plan, cfg, train_cfg, step, steps_budget, tokens, train_seconds, recent, scores)

    try:
        while True:
            progress = from_main(train_seconds / train_cfg.max_seconds, accelerator) if train_cfg.max_seconds else None
            if (steps_budget is not None and step >= steps_budget) or (progress is not None and progress >= 1.0):
                break
            if stop_after is not None and step >= stop_after:
                stopped = True
                break
            lr = lr_at(train_cfg, step, steps_budget, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            done = progress if progress is not None else step / max(1, steps_budget or 1)
            archs = plan.archs(step, done)
            try:
                for _ in range(train_cfg.grad_accum):
                    losses = _sandwich_micro_step(net, optimizer, batches, archs, cfg, train_cfg, accelerator, step)
                    tokens += tokens_per_micro
            except KeyboardInterrupt:
                if world == 1:  # keep the finished steps (every process would have to take part otherwise)
                    tokens -= tokens % (tokens_per_micro * train_cfg.grad_accum)
                    path = _save(accelerator, net, out, step, snapshot({}), data)
                    log(f"interrupted: checkpoint {path} at step {step}; run the same command to resume")
                raise
            step += 1
            for role, value in losses.items():
                recent[role] = (recent.get(role, []) + [value])[-20:]
            train_seconds = time.perf_counter() - started
            if train_cfg.log_interval and step % train_cfg.log_interval == 0:
                shown = ", ".join(f"{r} {v:.4f}" for r, v in losses.items())
                log(f"step {step}: {shown}, lr {lr:.2e}, {train_seconds:.0f}s")
            last = steps_budget is not None and step >= steps_budget
            if cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0 and not last:
                _save(accelerator, net, out, step, snapshot({}), data)
        scores: dict[str, float] = {}
        if not stopped:
            unwrapped = accelerator.unwrap_model(net)
            for role, arch in (("largest", plan.largest), ("smallest", plan.smallest)):
                scores[role] = evaluate_subnet(unwrapped, arch, data, train_cfg, accelerator).val_loss
        meta_out = snapshot(scores)
        meta_out["finished"] = not stopped
        path = _save(accelerator, net, out, step, meta_out, data)
        return SupernetRun(path=path, steps=step, tokens=tokens, train_seconds=train_seconds,
                           losses=meta_out["losses"], scores=scores, resumed_from=resumed_from, finished=not stopped)
    finally:
        accelerator.free_memory()


def _meta(record: dict[str, Any], space: TransformerSpace, plan: SandwichPlan, cfg: SupernetConfig,
          train_cfg: TrainConfig, step: int, steps_budget: int | None, tokens: int, seconds: float,
          recent: dict[str, list[float]], scores: dict[str, float]) -> dict[str, Any]:
    return {
        "space": space_record(space),
        "constraints": space.describe()["constraints"],
        "record": record,
        "step": step,
        "total_steps": steps_budget,
        "tokens": tokens,
        "train_seconds": seconds,
        "finished": False,
        "largest": json_arch(plan.largest),
        "smallest": json_arch(plan.smallest),
        "losses": {role: float(np.mean(v)) for role, v in recent.items()},
        "scores": scores,
        "config": dataclasses.asdict(cfg),
        "train": dataclasses.asdict(train_cfg),
    }


def json_arch(arch: Architecture) -> dict[str, Any]:
    return json.loads(arch.to_json())


def _save(accelerator: Accelerator, net: torch.nn.Module, out: Path, step: int, meta: dict[str, Any],
          data: TokenData) -> Path:
    """Write ``checkpoint-<step>`` completely (every process writes its part of the optimizer state), then
    point ``latest`` at it; older checkpoints are removed."""
    final = checkpoint_dir(out, step)
    tmp = out / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / STATE))
    accelerator.wait_for_everyone()  # each process writes its own random state there, without a barrier after it
    if accelerator.is_main_process:
        write_weights(accelerator.unwrap_model(net), tmp, meta)
        if data.tokenizer is not None:
            data.tokenizer.save_pretrained(str(tmp / TOKENIZER))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        publish(out, final)
    accelerator.wait_for_everyone()
    return final


def _touch(net: torch.nn.Module) -> torch.Tensor:
    """Zero times one element of every weight: every weight gets a gradient (see the module docstring)."""
    return sum(p.view(-1)[:1].sum() for p in net.parameters()) * 0.0  # type: ignore[return-value]


def _sandwich_micro_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Any,
                         archs: list[tuple[str, Architecture]], cfg: SupernetConfig, train_cfg: TrainConfig,
                         accelerator: Accelerator, step: int) -> dict[str, float]:
    """One micro-batch through every subnet of the step; one backward of their mean loss."""
    with accelerator.accumulate(net):
        loss, error, parts = None, None, {}
        try:
            interrupt.check()
            x, y = next(batches)
            total, teacher = 0.0, None
            for role, arch in archs:
                out = net(x, arch, targets=y)
                value = out.loss
                if teacher is not None and cfg.distill:
                    student = out.logits.float().log_softmax(-1).flatten(0, 1)
                    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
                    value = (1.0 - cfg.distill) * value + cfg.distill * kl
                if role == "largest" and cfg.distill:
                    teacher = out.logits.detach().float().log_softmax(-1).flatten(0, 1)
                total = total + value
                parts.setdefault(role, []).append(float(out.ce_loss.detach()))
            loss = total / len(archs) + _touch(net)
        except (Exception, KeyboardInterrupt) as e:  # announced to the other processes before the backward
            error = e
        agreed_update(net, optimizer, loss, error, train_cfg, accelerator, step)
    return {role: float(np.mean(v)) for role, v in parts.items()}
