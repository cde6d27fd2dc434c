"""The training loop on two real processes: DDP over gloo, and DeepSpeed ZeRO-2 on its CPU accelerator.

Each launch runs ``tests/train/dist_script.py`` (four scenarios in the same two processes) and the
tests read what every process wrote: the data it trained on, its weights, what it raised.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from llmnas.data import DataConfig, prepare_data
from llmnas.models.decoder import Decoder
from llmnas.train import TrainConfig, train
from tests.conftest import launch_two_processes, shared_data
from tests.train.dist_script import BLOCK, arch

SCRIPT = Path(__file__).with_name("dist_script.py")


def launch(tmp_path: Path, mode: str) -> list[dict]:
    data_file = shared_data("text/tinyshakespeare.txt")
    out = tmp_path / mode
    out.mkdir()
    done = launch_two_processes(mode, SCRIPT, str(out), str(data_file))
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def single_process_reference(tmp_path: Path) -> dict[str, torch.Tensor]:
    """The same 4 steps in one process with the two shards' batch together (batch 6 = 2 x 3)."""
    data = prepare_data(DataConfig(source=str(shared_data("text/tinyshakespeare.txt")), tokenizer="char",
                                   block_size=BLOCK, max_bytes=40_000, cache_dir=str(tmp_path / "cache")))
    cfg = TrainConfig(max_steps=4, batch_size=6, warmup_steps=2, lr=3e-3, eval_blocks=8, mixed_precision="no")
    torch.manual_seed(0)  # the initial weights of dist_script.py's first scenario
    model, _ = train(arch(), data, cfg, Accelerator(cpu=True), model=Decoder(arch()))
    return model.state_dict()


def check_ranks_agree(tmp_path: Path, ranks: list[dict], mode: str) -> None:
    # Both processes know there are two of them, in accelerate and in torch.distributed.
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["world_size"] for r in ranks] == [2, 2]
    # Each process trained on its own shard: 4 steps x 3 sequences, none shared with the other process.
    seen = [r["steps"]["seen"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 12
    assert not {tuple(s) for s in seen[0]} & {tuple(s) for s in seen[1]}
    assert ranks[0]["steps"]["tokens"] == 4 * 2 * 3 * BLOCK
    # ... and the replicas hold the same weights, equal to one process training on both shards at once.
    assert ranks[0]["steps"]["hash"] == ranks[1]["steps"]["hash"]
    ours = torch.load(tmp_path / mode / "steps_weights.pt")
    reference = single_process_reference(tmp_path)
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=2e-5, msg=f"{mode}: {name}")
    # A time budget: one clock drives the schedule and the stop, so the replicas stay bitwise equal.
    assert ranks[0]["time"]["steps"] == ranks[1]["time"]["steps"] > 1
    assert ranks[0]["time"]["hash"] == ranks[1]["time"]["hash"]
    # A failure on process 1 only: both processes raise (nobody waits in a collective) ...
    assert ranks[1]["failure"]["raised"] == "IndexError"
    assert ranks[0]["failure"]["raised"] == "TrainingFailed"
    assert "process 1: IndexError" in ranks[0]["failure"]["message"]
    # ... and the two are still in step: the next run trains together.
    assert ranks[0]["after"]["steps"] == ranks[1]["after"]["steps"] == 2
    assert ranks[0]["after"]["hash"] == ranks[1]["after"]["hash"]


def test_ddp_on_two_processes(tmp_path) -> None:
    ranks = launch(tmp_path, "ddp")
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ranks)
    check_ranks_agree(tmp_path, ranks, "ddp")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None and os.environ.get("CI", "").lower() != "true",
                    reason="deepspeed is not installed (pip install -e '.[deepspeed]'); CI installs it")
def test_deepspeed_zero2_on_two_cpu_processes(tmp_path) -> None:
    ranks = launch(tmp_path, "deepspeed")
    assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" for r in ranks)
    check_ranks_agree(tmp_path, ranks, "deepspeed")
