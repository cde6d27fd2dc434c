"""Run under ``accelerate launch`` by tests/train/test_distributed.py; each process writes what it saw.

    accelerate launch ... tests/train/dist_script.py OUT_DIR DATA_FILE

Scenarios, one after the other in the same processes (so that the last one also shows that the
processes are still in step after a failure):

1. ``steps``: 4 optimizer steps; every micro-batch's input is recorded, the final weights saved.
2. ``time``: a time budget of 1.5 s; the weights' hash is recorded.
3. ``failure``: process 1 trains on corrupt tokens (ids beyond the vocabulary), process 0 on good ones;
   what each process raised is recorded.
4. ``after``: 2 more steps on good data; the weights' hash is recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from llmnas.data import DataConfig, prepare_data
from llmnas.models.decoder import Decoder
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN
from llmnas.train import TrainConfig, make_accelerator, train

BLOCK = 32


def arch() -> Architecture:
    blocks = (BlockSpec(AttentionSpec(2, 1, 16), DenseFFN(64, "swiglu")), BlockSpec(AttentionSpec(2, 2, 16),
                                                                                    DenseFFN(64, "gelu")))
    return Architecture(vocab_size=65, d_model=32, max_seq_len=BLOCK, blocks=blocks, pos="rope")


class Recording(Decoder):
    """The decoder, noting every training input it is given (what this process's shard really holds)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[int]] = []

    def forward(self, x, *args, **kwargs):
        if self.training:
            self.seen.extend(row.tolist() for row in x)
        return super().forward(x, *args, **kwargs)


def weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out: Path, data_file: str) -> None:
    cfg = TrainConfig(max_steps=4, batch_size=3, warmup_steps=2, lr=3e-3, eval_blocks=8, mixed_precision="no")
    accelerator = make_accelerator(cfg)
    rank = accelerator.process_index
    data = prepare_data(DataConfig(source=data_file, tokenizer="char", block_size=BLOCK, max_bytes=40_000,
                                   cache_dir=str(out / f"cache{rank}")))
    record: dict = {
        "num_processes": accelerator.num_processes,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "distributed_type": str(accelerator.distributed_type),
    }
    torch.manual_seed(0)
    model, result = train(arch(), data, cfg, accelerator, model=Recording(arch()))
    record["steps"] = {"seen": model.seen, "hash": weights_hash(model), "tokens": result.tokens,
                       "val_loss": result.val_loss}
    if rank == 0:
        torch.save(model.state_dict(), out / "steps_weights.pt")

    timed = cfg.replace(max_steps=None, max_seconds=1.5)
    model, result = train(arch(), data, timed, accelerator)
    record["time"] = {"hash": weights_hash(model), "steps": result.steps}

    bad = replace(data, train=data.train.copy())
    if rank == 1:
        bad.train[:] = 10_000  # beyond the 65-id vocabulary: the embedding raises on this process only
    started = time.perf_counter()
    try:
        train(arch(), bad, cfg, accelerator)
        record["failure"] = {"raised": None}
    except Exception as e:  # noqa: BLE001 - what each process raised is the point of the scenario
        record["failure"] = {"raised": type(e).__name__, "message": str(e)}
    record["failure"]["seconds"] = time.perf_counter() - started

    model, result = train(arch(), data, cfg.replace(max_steps=2), accelerator)
    record["after"] = {"hash": weights_hash(model), "steps": result.steps}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
