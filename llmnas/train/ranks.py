"""Keeping the processes of a data-parallel run in step.

Under ``accelerate launch`` every process runs the same loop, and each collective (DDP's gradient
all-reduce, an evaluation gather) waits for all of them. So every decision that changes the control
flow must be the same on every process:

- *time*: one clock (the main process's) places the learning-rate schedule and ends a time budget;
- *pruning*: the main process's pruner decides and the others follow;
- *failure*: an exception on one process (out of memory, a bad batch, anything) is announced through a
  reduced flag before the next collective, so that every process raises instead of waiting forever
  for the one that left.

With one process these are plain function calls with no communication.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, gather_object

T = TypeVar("T")


class TrainingFailed(Exception):
    """Another process of a data-parallel run raised; ``reasons`` maps each failed process to its error."""

    def __init__(self, reasons: dict[int, str]) -> None:
        self.reasons = reasons
        text = "; ".join(f"process {rank}: {reason}" for rank, reason in sorted(reasons.items()))
        super().__init__(f"training failed on another process ({text})")


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def raise_if_any_failed(error: BaseException | None, accelerator: Accelerator) -> None:
    """Raise on every process when any process passes an error; return on every process otherwise.

    The failed process re-raises its own exception; the others raise :class:`TrainingFailed` naming
    the processes that failed and why. One all-reduce of a flag (plus a gather of the messages when
    something failed).
    """
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return
    flag = torch.tensor([0.0 if error is None else 1.0], device=accelerator.device)
    if accelerator.reduce(flag, "sum").item() != 0:
        _raise_failure(error)


def run_guarded(accelerator: Accelerator, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on every process; if it raises on any of them, every process raises."""
    error: BaseException | None = None
    result = None
    try:
        result = fn(*args)
    except (Exception, KeyboardInterrupt) as e:  # any failure must be announced to the other processes
        error = e
    raise_if_any_failed(error, accelerator)
    return result  # type: ignore[return-value]


def from_main(value: float, accelerator: Accelerator) -> float:
    """The main process's ``value`` on every process (one clock, one decision)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(broadcast(t, from_process=0).item())


def main_decides(flag: bool, accelerator: Accelerator) -> bool:
    """True on every process when the main process says so (pruning decisions must agree)."""
    return from_main(1.0 if flag else 0.0, accelerator) != 0.0


def mean_loss_or_failure(loss: torch.Tensor | None, error: BaseException | None, accelerator: Accelerator) -> float:
    """The loss averaged over processes, in the same collective that announces a failure.

    Called between the forward and the backward pass: a process whose forward raised reports it here,
    before DDP's gradient all-reduce, where the others would otherwise wait for it forever.
    """
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return float(loss.detach().float().item())  # type: ignore[union-attr]
    device = accelerator.device
    value = loss.detach().float().reshape(1).to(device) if error is None else torch.zeros(1, device=device)
    both = torch.cat([value, torch.tensor([float(error is not None)], device=device)])
    summed = accelerator.reduce(both, "sum")
    if summed[1].item() == 0:
        return float(summed[0].item()) / accelerator.num_processes
    _raise_failure(error)


def _raise_failure(error: BaseException | None) -> NoReturn:
    """Once every process knows that one failed: gather the reasons and raise everywhere."""
    messages = gather_object([None if error is None else describe(error)])
    if error is not None:
        raise error
    raise TrainingFailed({rank: m for rank, m in enumerate(messages) if m is not None})
