"""Supernet training on two real processes: DDP over gloo, and DeepSpeed ZeRO-2 on its CPU accelerator.

Each launch runs ``tests/supernet/dist_supernet.py`` (three trainings in the same two processes); the tests
read what every process wrote: the architectures and sequences each SuperNet forward got, and the weights'
hash after every optimizer step.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmnas.search.engine import prepare_space, recipe_data
from llmnas.supernet import load_supernet
from llmnas.supernet.checkpoint import latest_checkpoint
from llmnas.supernet.split import SplitSuperNet
from llmnas.supernet.train import SandwichPlan, train_supernet
from llmnas.train import make_accelerator
from tests.conftest import launch_two_processes
from tests.supernet.dist_supernet import BATCH, SCENARIOS, SPLIT, recipe, train_config, weights_hash

SCRIPT = Path(__file__).with_name("dist_supernet.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The token cache both processes read (written once here), the space, and the data."""
    cache = tmp_path_factory.mktemp("tokens")
    r = recipe(cache)
    data = recipe_data(r)
    return cache, r, data, prepare_space(r, data)


def launch(tmp_path: Path, cache: Path, mode: str) -> list[dict]:
    out = tmp_path / mode
    out.mkdir()
    done = launch_two_processes(mode, SCRIPT, str(out), str(cache))
    assert "Expected to have finished reduction" not in done.stderr, done.stderr[-4000:]
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def check_ranks(ranks: list[dict], corpus) -> None:
    _, _, _, space = corpus
    # Both processes know there are two of them, in accelerate and in torch.distributed.
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["world_size"] for r in ranks] == [2, 2]
    for name, (sn, steps) in SCENARIOS.items():
        runs = [r[name] for r in ranks]
        assert [r["steps"] for r in runs] == [steps, steps]
        # Every process trained the same architectures at every step: the plan's, in its order.
        plan = SandwichPlan(space, sn)
        expected = [a.id for t in range(steps) for _, a in plan.archs(t, t / steps)]
        assert [f["arch"] for f in runs[0]["forwards"]] == [f["arch"] for f in runs[1]["forwards"]] == expected
        # The sandwich rule: every subnet of a step got the same sequences ...
        rows = []
        for run in runs:
            per_step = [run["forwards"][i:i + sn.n_subnets] for i in range(0, len(run["forwards"]), sn.n_subnets)]
            assert len(per_step) == steps
            for group in per_step:
                assert all(f["rows"] == group[0]["rows"] for f in group) and len(group[0]["rows"]) == BATCH
            rows.append({row for group in per_step for row in group[0]["rows"]})
        # ... and the two processes trained on disjoint shards.
        assert len(rows[0]) == len(rows[1]) == steps * BATCH
        assert not rows[0] & rows[1]
        # The replicas hold bitwise the same weights after every optimizer step (and the weights moved).
        assert len(runs[0]["hashes"]) == steps and runs[0]["hashes"] == runs[1]["hashes"]
        assert len(set(runs[0]["hashes"])) == steps
        # The checkpoint (written by the main process) holds those weights; the scores agree.
        path = Path(runs[0]["path"])
        assert path.name == f"checkpoint-{steps}" and runs[1]["path"] == runs[0]["path"]
        assert weights_hash(load_file(str(path / "supernet.safetensors"))) == runs[0]["hashes"][-1]
        assert runs[0]["scores"] == runs[1]["scores"] and set(runs[0]["scores"]) == {"largest", "smallest"}


def check_split(ranks: list[dict], corpus) -> None:
    """The split supernet under two processes: both trained each part's plan in order, with equal weights
    after every step, and the folder loads as one supernet."""
    _, _, _, space = corpus
    sn, steps = SPLIT
    runs = [r["split"] for r in ranks]
    assert [(r["parts"], r["finished"], r["steps"]) for r in runs] == [(2, True, steps)] * 2
    expected = [a.id for value in ("rmsnorm", "layernorm")
                for t in range(steps) for _, a in SandwichPlan(space, sn, ("norm", value)).archs(t, t / steps)]
    assert [f["arch"] for f in runs[0]["forwards"]] == [f["arch"] for f in runs[1]["forwards"]] == expected
    assert len(runs[0]["hashes"]) == 2 * steps and runs[0]["hashes"] == runs[1]["hashes"]
    folder = Path(runs[0]["path"])
    ckpt = load_supernet(folder)
    assert isinstance(ckpt.net, SplitSuperNet) and ckpt.meta["split"]["values"] == ["rmsnorm", "layernorm"]
    last = load_file(str(latest_checkpoint(folder / "norm-layernorm") / "supernet.safetensors"))
    assert weights_hash(last) == runs[0]["hashes"][-1]


def check_against_one_process(tmp_path: Path, mode: str, corpus) -> None:
    """The two-process sandwich run equals one process training on both shards at once (batch 2 x 2)."""
    _, r, data, space = corpus
    sn, steps = SCENARIOS["sandwich"]
    cfg = train_config(r.train, steps, batch_size=2 * BATCH)
    result = train_supernet(space, data, sn, cfg, make_accelerator(cfg), tmp_path / "one", log=lambda _: None)
    reference = load_file(str(result.path / "supernet.safetensors"))
    ours = load_file(str(tmp_path / mode / "sandwich" / f"checkpoint-{steps}" / "supernet.safetensors"))
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=2e-5, msg=f"{mode}: {name}")


def test_ddp_on_two_processes(tmp_path, corpus) -> None:
    ranks = launch(tmp_path, corpus[0], "ddp")
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ranks)
    check_ranks(ranks, corpus)
    check_split(ranks, corpus)
    check_against_one_process(tmp_path, "ddp", corpus)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None and os.environ.get("CI", "").lower() != "true",
                    reason="deepspeed is not installed (pip install -e '.[deepspeed]'); CI installs it")
def test_deepspeed_zero2_on_two_cpu_processes(tmp_path, corpus) -> None:
    ranks = launch(tmp_path, corpus[0], "deepspeed")
    assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" for r in ranks)
    check_ranks(ranks, corpus)
    check_split(ranks, corpus)
    check_against_one_process(tmp_path, "deepspeed", corpus)
