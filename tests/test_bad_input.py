"""Bad input, one row each: exit code 2, one ``llmnas: error:`` line naming the key and value, no traceback,
nothing written (issue 7, section 3).

Each row is the argv of an ``llmnas`` command, run in-process through :func:`llmnas.cli.main` (or as a fresh
``python -m llmnas`` process where a hang or the real entry point matters) in ``tmp_path``, with the files it
needs written there first. ``{tmp}`` in an argument is ``tmp_path``. After the command, the files under
``tmp_path`` must be exactly the inputs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from llmnas.cli import main
from tests.conftest import shared_data

SPACE = """\
name: micro
vocab_size: 257
max_seq_len: 32
d_model: [32, 48]
n_layers: [1, 2]
layer:
  n_heads: [2, 4]
  activation: [gelu, swiglu]
  ffn_mult: [2]
"""
ARCH = (
    '{"format": "llmnas.arch/1", "vocab_size": 257, "d_model": 32, "max_seq_len": 32, "norm": "rmsnorm", '
    '"norm_eps": 1e-05, "pos": "rope", "rope_base": 10000.0, "tie_embeddings": true, "blocks": [{"attn": '
    '{"n_heads": 2, "n_kv_heads": 2, "head_dim": 16, "window": null}, "ffn": {"kind": "dense", "hidden": 64, '
    '"activation": "gelu"}}]}'
)


def recipe(**search) -> str:
    """A tiny search recipe over ``space.yaml`` and ``data.txt``, with run folder and caches under tmp."""
    return yaml.safe_dump({
        "study": "t",
        "space": "{tmp}/space.yaml",
        "run_dir": "{tmp}/runs",
        "data": {"source": "{tmp}/data.txt", "tokenizer": "byte", "block_size": 32, "cache_dir": "{tmp}/cache"},
        "train": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1},
        "search": {"sampler": "random", "n_trials": 3, "seed": 0, **search},
    })


def checkpoint(tmp: Path, name: str = "ckpt") -> None:
    """A real training checkpoint (architecture, weights, byte tokenizer) at ``tmp/name``."""
    from llmnas.data.tokenizers import byte_tokenizer
    from llmnas.export.checkpoint import save_checkpoint
    from llmnas.models.decoder import Decoder
    from llmnas.space import Architecture

    save_checkpoint(Decoder(Architecture.from_json(ARCH)), tmp / name, tokenizer=byte_tokenizer())


def study_db(tmp: Path) -> None:
    import optuna

    optuna.create_study(study_name="t", storage=f"sqlite:///{tmp / 'runs' / 't' / 'study.db'}")


@dataclass
class Row:
    """One bad input: the command, the files it needs, what the one-line error must say."""

    argv: list[str]
    says: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    fresh: bool = False  # a fresh process (bounded by a timeout: some of these used to hang)
    needs: str | None = None  # real data under ../shared/data
    # The error needs the tokenised data (the space's vocabulary comes from the tokenizer): the token cache,
    # a cache of the corpus rather than an output of the run, may stay; nothing of the run itself may.
    keeps_token_cache: bool = False


BASE = {"space.yaml": SPACE, "data.txt": "to be or not to be, that is the question\n" * 200, "r.yaml": recipe()}
LATIN1 = "study: caf\xe9\n".encode("latin-1")
# a small benchmark run, so that a check made only after the runs still ends quickly
BENCH = ["--data", "{nb201}", "--dataset", "cifar10", "--budget", "5", "--seeds", "1", "--workers", "1",
         "--cache-dir", "none", "--out", "{tmp}/nb"]
ROWS: dict[str, Row] = {
    # ---- recipe values, read as YAML 1.2 numbers, named by file and full dotted key
    "lr-1e3-is-a-number": Row(["search", "{tmp}/r.yaml", "--set", "train.lr=1e3", "--set", "train.min_lr=5e3"],
                              ["r.yaml: train.lr=1000.0, train.min_lr=5000.0"], BASE),
    "batch-1e-3-is-a-number": Row(["search", "{tmp}/r.yaml", "--set", "train.batch_size=1e-3"],
                                  ["r.yaml: train.batch_size=0.001: must be an integer"], BASE),
    "batch-size-0": Row(["search", "{tmp}/r.yaml", "--set", "train.batch_size=0"],
                        ["r.yaml: train.batch_size=0: must be a positive integer"], BASE),
    "retrain-batch-size-0": Row(["search", "{tmp}/r.yaml", "--set", "retrain.batch_size=0"],
                                ["r.yaml: retrain.batch_size=0: must be a positive integer"], BASE),
    "data-block-size-0": Row(["search", "{tmp}/r.yaml", "--set", "data.block_size=0"],
                             ["r.yaml: data.block_size=0: must be a positive integer"], BASE),
    "pruner-kind": Row(["search", "{tmp}/r.yaml", "--set", "search.pruner.kind=sometimes"],
                       ["r.yaml: search.pruner.kind='sometimes': not allowed"], BASE),
    "max-seconds-0": Row(["search", "{tmp}/r.yaml", "--set", "train.max_seconds=0"],
                         ["train.max_seconds=0"], BASE, fresh=True),
    "max-seconds-neg": Row(["search", "{tmp}/r.yaml", "--set", "train.max_seconds=-5"],
                           ["train.max_seconds=-5"], BASE, fresh=True),
    "heartbeat-0": Row(["search", "{tmp}/r.yaml", "--set", "search.heartbeat_seconds=0"],
                       ["r.yaml: search.heartbeat_seconds=0: must be a positive integer"], BASE),
    "grace-neg": Row(["search", "{tmp}/r.yaml", "--set", "search.grace_seconds=-5"],
                     ["r.yaml: search.grace_seconds=-5: must be a positive integer"], BASE),
    "grace-below-heartbeat": Row(["search", "{tmp}/r.yaml", "--set", "search.grace_seconds=10"],
                                 ["search.grace_seconds=10: must be greater than search.heartbeat_seconds=30"], BASE),
    "search-timeout-neg": Row(["search", "{tmp}/r.yaml", "--set", "search.timeout=-5"],
                              ["r.yaml: search.timeout=-5.0: must be a positive number"], BASE),
    "set-not-key-value": Row(["search", "{tmp}/r.yaml", "--set", "train.lr"], ["--set 'train.lr': expected KEY=VALUE"],
                             BASE),
    "set-under-a-number": Row(["search", "{tmp}/r.yaml", "--set", "train.max_steps.x=1"],
                              ["--set 'train.max_steps.x=1': train.max_steps in", "is a number, not a mapping"],
                              BASE),
    "unknown-constraint": Row(["search", "{tmp}/r.yaml", "--set", "search.constraints.max_parms=9"],
                              ["r.yaml: search.constraints.max_parms: unknown key"], BASE),
    "unknown-sampler": Row(["search", "{tmp}/r.yaml", "--set", "search.sampler=annealing"],
                           ["r.yaml: search.sampler='annealing': not allowed"], BASE),
    # ---- evaluators (search.evaluator, search.proxy, search.supernet)
    "unknown-evaluator": Row(["search", "{tmp}/r.yaml", "--set", "search.evaluator=annealed"],
                             ["r.yaml: search.evaluator='annealed': not allowed (allowed: scratch, proxy, supernet)"],
                             BASE),
    "unknown-proxy": Row(["search", "{tmp}/r.yaml", "--set", "search.evaluator=proxy", "--set", "search.proxy=snip"],
                         ["r.yaml: search.proxy='snip': not allowed (allowed: params, non_embedding_params, synflow"],
                         BASE),
    "proxy-evaluator-without-proxy": Row(["search", "{tmp}/r.yaml", "--set", "search.evaluator=proxy"],
                                         ["r.yaml: search.proxy: missing (required with search.evaluator: proxy"],
                                         BASE),
    "supernet-path-missing": Row(["search", "{tmp}/r.yaml", "--set", "search.evaluator=supernet", "--set",
                                  "search.supernet={tmp}/nope"], ["r.yaml: search.supernet=", "nope': no such folder"],
                                 BASE),
    "supernet-not-trained-yet": Row(["search", "{tmp}/r.yaml", "--set", "search.evaluator=supernet"],
                                    ["r.yaml: search.supernet (default):", "runs/t/supernet: no supernet there"],
                                    BASE, keeps_token_cache=True),
    "recipe-space-missing": Row(["search", "{tmp}/r.yaml", "--set", "space={tmp}/nope.yaml"],
                                ["r.yaml: space=", "nope.yaml': no such file"], BASE),
    "recipe-unknown-name": Row(["search", "quikstart"], ["recipe 'quikstart': no such file, and not a shipped"]),
    # ---- files that are not UTF-8, not YAML, empty, a folder, a key twice
    "recipe-not-utf8": Row(["search", "{tmp}/latin1.yaml"], ["latin1.yaml: not UTF-8 text (byte 0xe9"],
                           {"latin1.yaml": LATIN1}, fresh=True),
    "recipe-empty": Row(["search", "{tmp}/empty.yaml"], ["empty.yaml: the file is empty"], {"empty.yaml": ""}),
    "recipe-a-folder": Row(["search", "{tmp}"], ["is a directory, not a YAML file"], BASE),
    "recipe-not-yaml": Row(["search", "{tmp}/bad.yaml"], ["bad.yaml: not valid YAML (line 2"],
                           {"bad.yaml": "study: [t\n"}),
    "recipe-key-twice": Row(["search", "{tmp}/twice.yaml"], ["twice.yaml: not valid YAML (line 2, column 1): key "
                                                             "'study' is given twice"],
                            {"twice.yaml": "study: a\nstudy: b\n"}),
    "space-not-utf8": Row(["space", "validate", "{tmp}/latin1.yaml"], ["latin1.yaml: not UTF-8 text"],
                          {"latin1.yaml": LATIN1}),
    "space-a-list": Row(["space", "show", "{tmp}/list.yaml"], ["list.yaml: expected a mapping of keys at the top, "
                                                               "got a list"], {"list.yaml": "- 1\n- 2\n"}),
    "space-unknown-name": Row(["space", "sample", "tinyy"], ["space 'tinyy': no such file, and not a shipped space"]),
    "arch-not-utf8": Row(["export", "{tmp}/arch.json", "--out", "{tmp}/hf"], ["arch.json: not UTF-8 text"],
                         {"arch.json": b"\xff\xfe" + ARCH.encode()}),
    "arch-not-json": Row(["export", "{tmp}/arch.json", "--out", "{tmp}/hf"], ["arch.json: not valid JSON"],
                         {"arch.json": "vocab_size: 1\n"}),
    # ---- constraints no architecture meets
    "space-validate-infeasible": Row(["space", "validate", "{tmp}/space.yaml"],
                                     ["space.yaml: constraints: max_params=100 cannot be met"],
                                     {"space.yaml": SPACE + "constraints: {max_params: 100}\n"}),
    "space-sample-infeasible": Row(["space", "sample", "{tmp}/space.yaml", "--out", "{tmp}/a.json"],
                                   ["space.yaml: constraints: max_params=100 cannot be met"],
                                   {"space.yaml": SPACE + "constraints: {max_params: 100}\n"}),
    "search-infeasible-random": Row(["search", "{tmp}/r.yaml", "--set", "search.constraints.max_params=100"],
                                    ["max_params=100"], BASE, fresh=True, keeps_token_cache=True),
    "search-infeasible-evolution": Row(["search", "{tmp}/r.yaml", "--set", "search.constraints.max_params=100",
                                        "--set", "search.sampler=evolution"], ["max_params=100"], BASE, fresh=True,
                                       keeps_token_cache=True),
    # ---- absurd sizes
    "space-vocab-1e12": Row(["space", "validate", "{tmp}/space.yaml"],
                            ["space.yaml: vocab_size: 1,000,000,000,000 is too large (at most 16,777,216)"],
                            {"space.yaml": SPACE.replace("vocab_size: 257", "vocab_size: 1000000000000")}),
    "space-range-1e9": Row(["space", "show", "{tmp}/space.yaml"],
                           ["space.yaml: d_model: range", "1,000,000,000 values"],
                           {"space.yaml": SPACE.replace("[32, 48]", "{min: 1, max: 1000000000}")}),
    "arch-vocab-1e12": Row(["export", "{tmp}/arch.json", "--out", "{tmp}/hf"],
                           ["arch.json: vocab_size=1,000,000,000,000 is too large"],
                           {"arch.json": ARCH.replace('"vocab_size": 257', '"vocab_size": 1000000000000')}),
    # ---- output paths
    "sample-out-under-a-file": Row(["space", "sample", "{tmp}/space.yaml", "--out", "{tmp}/space.yaml/x/a.json"],
                                   ["--out", "space.yaml/x/a.json: cannot be created", "space.yaml is a file"],
                                   {"space.yaml": SPACE}),
    "sample-negative-seed": Row(["space", "sample", "{tmp}/space.yaml", "--seed", "-1"],
                                ["--seed -1: must be a non-negative integer"], {"space.yaml": SPACE}),
    "export-out-under-a-file": Row(["export", "{tmp}/arch.json", "--out", "{tmp}/arch.json/hf"],
                                   ["--out", "arch.json/hf: cannot be created", "arch.json is a file"],
                                   {"arch.json": ARCH}),
    # ---- checkpoints given to export
    "ckpt-corrupt-tokenizer": Row(["export", "{tmp}/ckpt/arch.json", "--weights", "{tmp}/ckpt", "--out", "{tmp}/hf"],
                                  ["ckpt/tokenizer' could not be loaded (JSONDecodeError"],
                                  {"ckpt/tokenizer/tokenizer.json": '{"version": '}, setup=checkpoint),
    "ckpt-missing-arch": Row(["export", "{tmp}/ckpt/arch.json", "--out", "{tmp}/hf"], ["file not found", "arch.json"],
                             setup=lambda t: (checkpoint(t), (t / "ckpt" / "arch.json").unlink())),
    "ckpt-missing-weights": Row(["export", "{tmp}/ckpt/arch.json", "--weights", "{tmp}/ckpt", "--out", "{tmp}/hf"],
                                ["weights file not found", "ckpt/model.safetensors"],
                                setup=lambda t: (checkpoint(t), (t / "ckpt" / "model.safetensors").unlink())),
    "ckpt-corrupt-weights": Row(["export", "{tmp}/ckpt/arch.json", "--weights", "{tmp}/ckpt", "--out", "{tmp}/hf"],
                                ["ckpt/model.safetensors: not a readable safetensors file"],
                                {"ckpt/model.safetensors": b"not safetensors"}, setup=checkpoint),
    "export-missing-sqlite": Row(["export", "sqlite:///{tmp}/runs/x/study.db", "--trial", "best", "--out", "{tmp}/hf"],
                                 ["sqlite:///", "runs/x/study.db: no such file"]),
    "export-missing-db-file": Row(["export", "{tmp}/nothing.db", "--trial", "best", "--out", "{tmp}/hf"],
                                  ["nothing.db: no such study file"]),
    "export-missing-run-folder": Row(["export", "{tmp}/runs/x", "--trial", "best", "--out", "{tmp}/hf"],
                                     ["runs/x: not found"]),
    "export-negative-seed": Row(["export", "{tmp}/arch.json", "--seed", "-3", "--out", "{tmp}/hf"],
                                ["--seed -3: must be a non-negative integer"], {"arch.json": ARCH}),
    # ---- the search command's own flags and storages (llmnas/cli/search.py, llmnas/search)
    "timeout-neg": Row(["search", "{tmp}/r.yaml", "--timeout", "-5"], ["--timeout", "-5"], BASE),
    "search-missing-data": Row(["search", "{tmp}/r.yaml", "--set", "data.source={tmp}/nope.txt"],
                               ["r.yaml: data: data source", "nope.txt' does not exist"], BASE),
    "train-missing-tokenizer": Row(["train", "{tmp}/r.yaml", "--set", "data.tokenizer={tmp}/tok", "--trial", "best"],
                                   ["r.yaml: data: tokenizer path", "tok' does not exist"], BASE),
    "storage-unknown-scheme": Row(["search", "{tmp}/r.yaml", "--storage", "foo://bar"], ["foo://bar"], BASE),
    "storage-postgres-no-driver": Row(["search", "{tmp}/r.yaml", "--storage", "postgresql+pg8000://u@localhost/db"],
                                      ["postgresql+pg8000://u@localhost/db", "driver 'pg8000' is not installed"],
                                      BASE, fresh=True),
    "storage-journal-not-a-journal": Row(["search", "{tmp}/r.yaml", "--storage", "journal:///{tmp}/data.txt"],
                                         ["data.txt is not a journal file"], BASE),
    "storage-journal-no-path": Row(["search", "{tmp}/r.yaml", "--storage", "journal:study.log"],
                                   ["journal:///PATH"], BASE),
    "storage-not-a-database": Row(["search", "{tmp}/r.yaml", "--storage", "sqlite:///{tmp}/data.txt"],
                                  ["data.txt"], BASE),
    "early-error-leaves-no-study-db": Row(["search", "{tmp}/r.yaml", "--set", "data.source={tmp}/missing.txt"],
                                         ["missing.txt"], BASE),
    # ---- bench (llmnas/cli/bench.py, llmnas/benchmarks)
    "bench-no-strategies": Row(["bench", "nb201", *BENCH, "--strategies", ","], ["--strategies"], needs="nasbench201"),
    "bench-latency-cap-below-every-cell": Row(
        ["bench", "nb201", *BENCH, "--device", "pixel3", "--latency-cap", "0.001", "--strategies", "random"],
        ["--latency-cap", "0.001"], needs="nasbench201"),
}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if "__pycache__" not in p.parts}


def run_row(row: Row, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = [a.replace("{tmp}", str(tmp)) for a in row.argv]
    if row.needs is not None:
        argv = [a.replace("{nb201}", str(shared_data(row.needs))) for a in argv]
    if row.fresh:
        try:
            proc = subprocess.run([sys.executable, "-m", "llmnas", *argv], cwd=tmp, capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            return -1, "timed out after 120 s"
        return proc.returncode, proc.stderr
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    check_row(ROWS[name], tmp_path, monkeypatch, capsys)


def check_row(row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``row`` and check its one-line error, exit code 2 and that nothing was written (also used by the
    rows that need a database server, tests/search/test_postgres.py)."""
    if row.needs is not None:
        shared_data(row.needs)  # skips on a clone without the real data
    monkeypatch.chdir(tmp_path)  # anything written to a relative path shows up below
    monkeypatch.setenv("LLMNAS_CACHE", str(tmp_path / "llmnas-cache"))
    if row.setup is not None:
        row.setup(tmp_path)
    for rel, content in row.files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content.replace("{tmp}", str(tmp_path)) if isinstance(content, str) else content
        path.write_bytes(text.encode() if isinstance(text, str) else text)
    inputs = files_under(tmp_path)
    code, err = run_row(row, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("llmnas: error: "), err
    for fragment in row.says:
        assert fragment.replace("{tmp}", str(tmp_path)) in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    after = files_under(tmp_path)
    if row.keeps_token_cache:
        after = {f for f in after if f != "cache" and not f.startswith("cache/")}
    assert after == inputs, f"left behind: {sorted(after - inputs)}"
