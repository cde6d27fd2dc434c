"""Run under ``accelerate launch`` by tests/supernet/test_distributed.py; each process writes what it saw.

    accelerate launch ... tests/supernet/dist_supernet.py OUT_DIR TOKEN_CACHE

Three supernet trainings, one after the other in the same processes, on the quickstart recipe's corpus:

1. ``sandwich``: largest + smallest + 2 random subnets per step, in-place distillation on (3 steps);
2. ``no-largest``: the smallest and one random subnet only, with per-head-count and per-activation weights
   (``supernet.unshare``), so most weights get no gradient from any subnet at some step (what DDP's reducer
   must survive) (2 steps);
3. ``split``: a few-shot supernet split on the norm, its two parts trained one after the other (2 steps each).

A global forward pre-hook notes every training forward of the SuperNet (which architecture, which
sequences): nothing of the training code is replaced. After every optimizer step the weights' hash is
noted (the ``log`` callback runs right after the step).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.modules.module import register_module_forward_pre_hook

from llmnas.recipe import load_recipe
from llmnas.search.engine import prepare_space, recipe_data
from llmnas.supernet import SuperNet, SupernetConfig
from llmnas.supernet.train import train_supernet
from llmnas.train import TrainConfig, make_accelerator

SCENARIOS: dict[str, tuple[SupernetConfig, int]] = {
    "sandwich": (SupernetConfig(largest=True, smallest=True, random_subnets=2, distill=0.5, pool_size=200), 3),
    "no-largest": (SupernetConfig(largest=False, smallest=True, random_subnets=1, pool_size=200, seed=1,
                                  unshare=("n_heads", "activation")), 2),
}
#: then a few-shot supernet split on the norm: one part per value, trained one after the other (2 steps each)
SPLIT = (SupernetConfig(largest=False, smallest=False, random_subnets=1, pool_size=200, split="norm", seed=2), 2)
BATCH = 2  # per process


def recipe(cache: str | Path):
    return load_recipe("quickstart", ["data.max_bytes=200000", "data.block_size=72", f"data.cache_dir={cache}"])


def train_config(base: TrainConfig, steps: int, batch_size: int = BATCH) -> TrainConfig:
    # grad_accum 1 and grad_clip 1.0: what recipes/accelerate/cpu_deepspeed_zero2.yaml says
    return base.replace(max_seconds=None, max_steps=steps, batch_size=batch_size, warmup_steps=1, lr=3e-3,
                        eval_blocks=4, eval_batch_size=8, mixed_precision="no", grad_accum=1, grad_clip=1.0,
                        log_interval=1)


def weights_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def row_hash(row: torch.Tensor) -> str:
    return hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:16]


class Recorder:
    """What the SuperNet was asked to train on, and its weights after each step."""

    def __init__(self) -> None:
        self.net: SuperNet | None = None
        self.forwards: list[dict] = []
        self.hashes: list[str] = []

    def hook(self, module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, SuperNet) and module.training:
            x, arch = args[0], args[1]
            self.net = module
            self.forwards.append({"arch": arch.id, "rows": [row_hash(r) for r in x]})

    def log(self, line: str) -> None:
        if line.startswith("step ") and self.net is not None:
            self.hashes.append(weights_hash(self.net.state_dict()))


def main(out: Path, cache: str) -> None:
    r = recipe(cache)
    accelerator = make_accelerator(train_config(r.train, 1))
    rank = accelerator.process_index
    with accelerator.main_process_first():
        data = recipe_data(r)
    space = prepare_space(r, data)
    record: dict = {
        "num_processes": accelerator.num_processes,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "distributed_type": str(accelerator.distributed_type),
    }
    for name, (sn, steps) in {**SCENARIOS, "split": SPLIT}.items():
        rec = Recorder()
        handle = register_module_forward_pre_hook(rec.hook)
        try:
            result = train_supernet(space, data, sn, train_config(r.train, steps), accelerator, out / name,
                                    log=rec.log)
        finally:
            handle.remove()
        record[name] = {"forwards": rec.forwards, "hashes": rec.hashes, "steps": result.steps,
                        "path": str(result.path), "scores": result.scores, "parts": result.parts,
                        "finished": result.finished}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
