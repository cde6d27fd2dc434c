"""``llmnas supernet train|show`` as a user runs them: real processes, a SIGKILL and a rerun, bad input.

The shipped ``supernet_quick`` recipe runs with a tiny budget (its corpus cut to 200 kB, 12 steps of
batch 2); ``search.evaluator=scratch`` keeps the recipe's search section valid without a trained supernet
(``search.supernet`` must exist with ``evaluator: supernet``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmnas.cli import main
from llmnas.space import load_space
from llmnas.supernet.dims import space_record
from tests.conftest import REPO, run_group

STEPS = 12


def files_under(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The supernet's weights and the optimizer's state in a checkpoint folder."""
    out = {f"weights/{k}": v for k, v in load_file(str(checkpoint / "supernet.safetensors")).items()}
    optim = torch.load(checkpoint / "state" / "optimizer.bin", weights_only=True)
    for pid, state in optim["state"].items():
        for k, v in state.items():
            out[f"optimizer/{pid}/{k}"] = torch.as_tensor(v)
    return out


class Quick:
    """``llmnas supernet train supernet_quick`` with a tiny budget, its run folder under ``root``."""

    def __init__(self, root: Path, cache: Path) -> None:
        self.root, self.cache = root, cache
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "LLMNAS_CACHE": str(cache)}

    def argv(self, run_dir: Path, *extra: str) -> list[str]:
        sets = ["search.evaluator=scratch", f"run_dir={run_dir}", "data.max_bytes=200000", "data.block_size=72",
                f"data.cache_dir={self.cache}", f"supernet.train.max_steps={STEPS}", "supernet.train.batch_size=2",
                "supernet.train.warmup_steps=2", "supernet.train.eval_blocks=4", "supernet.train.log_interval=1",
                "supernet.pool_size=200", "supernet.checkpoint_interval=2", *extra]
        return [sys.executable, "-m", "llmnas", "supernet", "train", "supernet_quick",
                *[x for s in sets for x in ("--set", s)]]

    def run(self, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        return run_group(self.argv(run_dir, *extra), cwd=self.root, env=self.env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted run: the reference of the kill test and the checkpoint the bad-input rows break."""
    root = tmp_path_factory.mktemp("cli")
    quick = Quick(root, root / "cache")
    done = quick.run(root / "whole")
    assert done.returncode == 0, done.stderr[-3000:]
    return quick, root / "whole" / "supernet_quick" / "supernet", done


def test_train_prints_where_the_supernet_is_and_how_to_search_it(trained) -> None:
    quick, out, done = trained
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"checkpoint-{STEPS}", "latest"]
    lines = done.stdout.splitlines()
    assert sum(line.startswith("step ") for line in lines) == STEPS
    assert f"supernet: {out}/checkpoint-{STEPS} after {STEPS} steps" in done.stdout
    assert "validation loss largest" in done.stdout
    # the search command repeats the user's overrides (run_dir, data, ...), then names the evaluator and folder
    hint = next(line for line in lines if line.startswith("search it: ")).removeprefix("search it: ")
    assert hint.startswith("llmnas search supernet_quick --set search.evaluator=scratch --set run_dir=")
    assert hint.endswith(f"--set search.evaluator=supernet --set search.supernet={out}")


def test_search_hint_is_short_when_the_recipe_finds_its_supernet(tmp_path) -> None:
    import argparse

    from llmnas.cli.supernet import search_command, supernet_dir
    from llmnas.recipe import load_recipe

    recipe = load_recipe("supernet_quick")
    args = argparse.Namespace(recipe="supernet_quick", overrides=[], out=None)
    assert search_command(args, recipe, supernet_dir(recipe)) == "llmnas search supernet_quick"
    args = argparse.Namespace(recipe="supernet_quick", overrides=["run_dir=/x y"], out=None)
    assert search_command(args, recipe, supernet_dir(recipe)) == "llmnas search supernet_quick --set 'run_dir=/x y'"


def test_show_prints_the_checkpoint(trained, capsys) -> None:
    _, out, _ = trained
    assert main(["supernet", "show", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["checkpoint"] == str(out / f"checkpoint-{STEPS}")
    assert shown["space"] == "tiny" and shown["step"] == shown["total_steps"] == STEPS and shown["finished"] is True
    assert shown["sandwich"]["random_subnets"] == 2 and shown["sandwich"]["pool_size"] == 200
    assert set(shown["scores"]) == {"largest", "smallest"} and len(shown["id"]) == 12
    assert shown["tokens"] == STEPS * 4 * 2 * 72  # 4 subnets x batch 2 x block 72 per step
    # a checkpoint-<step> folder is shown the same way
    assert main(["supernet", "show", str(out / f"checkpoint-{STEPS}")]) == 0
    assert json.loads(capsys.readouterr().out) == shown


def test_sigkill_then_rerun_ends_with_the_uninterrupted_weights(trained) -> None:
    quick, reference, _ = trained
    run_dir = quick.root / "killed"
    out = run_dir / "supernet_quick" / "supernet"
    proc = subprocess.Popen(quick.argv(run_dir), cwd=quick.root, env=quick.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "latest").exists():  # the first checkpoint (step 2 of 12) is out: kill it mid-run
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads((out / (out / "latest").read_text().strip() / "supernet.json").read_text())
    assert killed_at["finished"] is False and killed_at["step"] < STEPS

    done = quick.run(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {out}/checkpoint-" in done.stdout
    final = out / f"checkpoint-{STEPS}"
    assert sorted(p.name for p in out.iterdir()) == [final.name, "latest"]  # no partial folder left
    ours, theirs = tensors(final), tensors(reference / final.name)
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    mine, ref = (json.loads((p / "supernet.json").read_text()) for p in (final, reference / final.name))
    assert (mine["tokens"], mine["scores"]) == (ref["tokens"], ref["scores"])


def test_ctrl_c_keeps_the_finished_steps_and_the_rerun_ends_with_the_uninterrupted_weights(trained) -> None:
    """The first Ctrl-C stops at the next micro-batch and writes a checkpoint of the finished steps (no
    periodic checkpoint here), exit status 130; the same command resumes from it."""
    quick, reference, _ = trained
    run_dir = quick.root / "interrupted"
    out = run_dir / "supernet_quick" / "supernet"
    argv = quick.argv(run_dir, "supernet.checkpoint_interval=0")
    proc = subprocess.Popen(argv, cwd=quick.root, env=quick.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        seen = ""
        while "step 3:" not in seen:  # a few steps done, then Ctrl-C
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no step 3 after 240 s"
            seen += line
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "interrupted: checkpoint" in stdout
    stopped = json.loads((out / (out / "latest").read_text().strip() / "supernet.json").read_text())
    assert stopped["finished"] is False and 3 <= stopped["step"] < STEPS

    done = quick.run(run_dir, "supernet.checkpoint_interval=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {out}/checkpoint-{stopped['step']}" in done.stdout
    final = out / f"checkpoint-{STEPS}"
    ours, theirs = tensors(final), tensors(reference / final.name)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []


# ---------------------------------------------------------------------- bad input: one clear line, nothing written
def run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def assert_one_clear_error(code: int, err: str, *says: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("llmnas: error: "), err
    for fragment in says:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


RECIPE_ROWS = {
    "no-supernet-section": (["quickstart"], ["quickstart.yaml: no supernet: section"]),
    "random-subnets-negative": (["supernet_quick", "--set", "supernet.random_subnets=-1"],
                                ["supernet_quick.yaml: ", "supernet.random_subnets=-1: must be a non-negative"]),
    "distill-without-largest": (["supernet_quick", "--set", "supernet.distill=0.5", "--set", "supernet.largest=false"],
                                ["supernet_quick.yaml: ", "supernet.distill needs supernet.largest: true"]),
    "unknown-key": (["supernet_quick", "--set", "supernet.foo=1"], ["supernet_quick.yaml: supernet.foo: unknown key"]),
    "unknown-train-key": (["supernet_quick", "--set", "supernet.train.max_stepz=3"],
                          ["supernet_quick.yaml: supernet.train.max_stepz: unknown key"]),
    "no-subnet": (["supernet_quick", "--set", "supernet.largest=false", "--set", "supernet.smallest=false",
                   "--set", "supernet.random_subnets=0"], ["supernet_quick.yaml: ", "no subnet to train"]),
}


@pytest.mark.parametrize("name", list(RECIPE_ROWS))
def test_bad_recipe(name: str, tmp_path, monkeypatch, capsys) -> None:
    argv, says = RECIPE_ROWS[name]
    monkeypatch.chdir(tmp_path)  # the recipe's relative run_dir (runs/) would land here
    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "cache"))
    code, err = run_main(["supernet", "train", *argv, "--set", "search.evaluator=scratch"], capsys)
    assert_one_clear_error(code, err, *says)
    assert files_under(tmp_path) == {}


def break_latest(out: Path) -> None:
    (out / "latest").write_text("checkpoint-99\n")


def truncate_weights(out: Path) -> None:
    path = out / f"checkpoint-{STEPS}" / "supernet.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def unreadable_meta(out: Path) -> None:
    (out / f"checkpoint-{STEPS}" / "supernet.json").write_text('{"format": "llmnas.supernet/1", "step": ')


def another_space(out: Path) -> None:
    """The record says tiny_char (vocabulary 257, block 72, as the recipe would give it) beside tiny's weights."""
    path = out / f"checkpoint-{STEPS}" / "supernet.json"
    meta = json.loads(path.read_text())
    meta["space"] = space_record(load_space("tiny_char").with_vocab_size(257).with_max_seq_len(72))
    path.write_text(json.dumps(meta))


def remove_weights(out: Path) -> None:
    (out / f"checkpoint-{STEPS}" / "supernet.safetensors").unlink()


SHOW_ROWS = {
    "latest-points-nowhere": (break_latest, ["latest: names 'checkpoint-99', which is not a complete checkpoint"]),
    "truncated-weights": (truncate_weights, ["supernet.safetensors: unreadable", "corrupted or partial"]),
    "missing-weights": (remove_weights, ["no supernet.safetensors: the checkpoint is partial"]),
    "unreadable-json": (unreadable_meta, ["supernet.json: unreadable", "corrupted or partial"]),
    "another-space": (another_space, ["do not fit the space recorded in supernet.json", "from another space"]),
}


@pytest.mark.parametrize("name", list(SHOW_ROWS))
def test_broken_checkpoint(name: str, trained, tmp_path, capsys) -> None:
    breaks, says = SHOW_ROWS[name]
    out = tmp_path / "supernet"
    shutil.copytree(trained[1], out)
    breaks(out)
    before = files_under(tmp_path)
    code, err = run_main(["supernet", "show", str(out)], capsys)
    assert_one_clear_error(code, err, str(out), *says)
    assert files_under(tmp_path) == before


def test_show_without_a_checkpoint(tmp_path, capsys) -> None:
    code, err = run_main(["supernet", "show", str(tmp_path / "nothing")], capsys)
    assert_one_clear_error(code, err, "nothing: no such supernet folder")
    (tmp_path / "empty").mkdir()
    code, err = run_main(["supernet", "show", str(tmp_path / "empty")], capsys)
    assert_one_clear_error(code, err, "empty: no finished supernet checkpoint")
    assert files_under(tmp_path) == {}


def test_train_into_a_supernet_of_another_space_or_recipe(trained, tmp_path, capsys) -> None:
    """Training into a folder that holds another run's supernet is refused, naming what differs; nothing is
    written there (the tokens come from the shared cache)."""
    quick, reference, _ = trained
    out = tmp_path / "supernet"
    shutil.copytree(reference, out)
    before = files_under(tmp_path)
    base = quick.argv(tmp_path / "runs")[3:]  # the recipe and its --set pairs, as the reference run had them
    rows = {
        "space": (["--set", "space=tiny_char"], ["a different space", f"checkpoint-{STEPS}"]),
        "random_subnets": (["--set", "supernet.random_subnets=3"], ["a different supernet.{random_subnets}"]),
        "lr": (["--set", "supernet.train.lr=0.01"], ["a different train.{lr}"]),
    }
    for change, (extra, says) in rows.items():
        code, err = run_main([*base, *extra, "--out", str(out)], capsys)
        assert_one_clear_error(code, err, str(out), *says)
        assert files_under(tmp_path) == before, change
    # a latest pointer naming no checkpoint: training does not start over silently
    break_latest(out)
    before = files_under(tmp_path)
    code, err = run_main([*base, "--out", str(out)], capsys)
    assert_one_clear_error(code, err, f"{out}/latest: names 'checkpoint-99', which is not a complete checkpoint")
    assert files_under(tmp_path) == before
