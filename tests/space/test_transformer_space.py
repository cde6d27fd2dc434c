from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

import numpy as np
import optuna
import pytest

from llmnas.cli import main
from llmnas.errors import SpaceError
from llmnas.space import Architecture, TransformerSpace, load_space
from llmnas.space.transformer import largest_divisor_at_most

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL_SPACE = textwrap.dedent(
    """
    name: enum
    vocab_size: 50
    max_seq_len: 32
    d_model: [32]
    n_layers: [1, 2]
    pos: [rope, learned]
    rope_base: [10000, 500000]
    layer:
      n_heads: [2, 4]
      kv_ratio: [1, 2]
      attention: [full, sliding]
      window: [4, 8]
      ffn: [dense, moe]
      activation: [swiglu, gelu]
      ffn_mult: [2]
      n_experts: [2, 4]
      top_k: [1]
      expert_mult: [1]
    uniform: [activation, window]
    """
)


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_every_shipped_space_loads_and_samples() -> None:
    for name in ("tiny", "small", "moe"):
        space = load_space(name)
        assert isinstance(space, TransformerSpace)
        for seed in range(5):
            arch = space.sample(seed)
            assert space.is_feasible(space.encode(arch))
            assert not space.constraints.violations(arch)


def test_tiny_space_is_sub_million_to_a_few_million_and_small_is_gpu_scale() -> None:
    tiny = [load_space("tiny").sample(s).param_counts().total for s in range(30)]
    small = [load_space("small").sample(s).param_counts().total for s in range(30)]
    assert 50_000 < min(tiny) and max(tiny) <= 4_000_000
    assert 20e6 <= min(small) and max(small) <= 150e6


def test_size_is_counted_exactly(tmp_path) -> None:
    """The closed-form size equals a brute-force enumeration of distinct architectures."""
    space = load_space(write(tmp_path, SMALL_SPACE))
    names = list(space.choices())
    seen = set()
    for values in itertools.product(*space.choices().values()):
        seen.add(space.key(dict(zip(names, values, strict=True))))
    assert space.size() == len(seen)


def test_parameter_names_are_fixed_whatever_the_depth() -> None:
    space = load_space("tiny")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths = set()
    for _ in range(20):
        trial = study.ask()
        arch = space.suggest(trial)
        depths.add(arch.n_layers)
        assert set(trial.params) == set(space.choices())
        study.tell(trial, float(arch.param_counts().total))
    assert len(depths) > 2
    assert "L05.n_heads" in space.choices() and "layer.activation" not in space.choices()


def test_multivariate_tpe_samples_every_parameter_jointly() -> None:
    """With a fixed parameter set, multivariate TPE never falls back to independent sampling after
    its start-up trials (a depth-dependent set of names would make it do so silently)."""
    space = load_space("tiny")
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=5)
    independent = []
    original = sampler.sample_independent

    def record(study, trial, name, dist):
        independent.append(trial.number)
        return original(study, trial, name, dist)

    sampler.sample_independent = record
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(space.suggest(t).param_counts().total), n_trials=12)
    assert independent and max(independent) < 5


def test_nsga2_relative_space_is_the_whole_space() -> None:
    space = load_space("tiny")
    sampler = optuna.samplers.NSGAIISampler(seed=0, population_size=4)
    study = optuna.create_study(sampler=sampler, directions=["minimize", "minimize"])
    study.optimize(lambda t: (float(space.suggest(t).param_counts().total), float(t.number % 3)), n_trials=10)
    assert set(sampler.infer_relative_search_space(study, study.trials[-1])) == set(space.choices())


def test_mutation_changes_one_decision_and_stays_valid() -> None:
    space = load_space("moe")
    rng = np.random.default_rng(0)
    for _ in range(50):
        params = space.sample_params(rng)
        new = space.mutate_params(params, rng)
        changed = [k for k in params if params[k] != new[k]]
        assert len(changed) == 1 and changed[0] in space.active(params)
        assert space.key(new) != space.key(params) and space.is_feasible(new)
        arch = space.decode(params)
        assert space.mutate(arch, rng) != arch


def test_constraints_hold_for_sampling_and_mutation() -> None:
    space = load_space("tiny")
    rng = np.random.default_rng(1)
    arch = space.sample(rng)
    for _ in range(100):
        arch = space.mutate(arch, rng)
        assert arch.param_counts().total <= 4_000_000


def test_encode_decode_round_trip_and_foreign_architecture() -> None:
    space = load_space("tiny")
    for seed in range(20):
        arch = space.sample(seed)
        assert space.decode(space.encode(arch)) == arch
    foreign = load_space("small").sample(0)
    with pytest.raises(SpaceError, match="is not in space 'tiny'"):
        space.encode(foreign)


def test_inactive_decisions_do_not_change_the_architecture(tmp_path) -> None:
    space = load_space(write(tmp_path, SMALL_SPACE))
    params = space.sample_params(0)
    active = set(space.active(params))
    for name, choices in space.choices().items():
        if name in active:
            continue
        for value in choices:
            assert space.key({**params, name: value}) == space.key(params)


def test_kv_ratio_gives_a_divisor() -> None:
    assert largest_divisor_at_most(12, 12 / 5) == 2
    assert largest_divisor_at_most(6, 6 / 4) == 1
    assert largest_divisor_at_most(8, 8 / 2) == 4


def test_with_vocab_and_sequence_length() -> None:
    space = load_space("tiny").with_vocab_size(65).with_max_seq_len(80)
    arch = space.sample(0)
    assert arch.vocab_size == 65 and arch.max_seq_len == 80
    with pytest.raises(SpaceError, match="window choices"):
        load_space("tiny").with_max_seq_len(32)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("depth: [1]", r"depth: unknown key \(allowed: kind, name"),
        ("d_model: []", "d_model: empty choice list"),
        ("d_model: [64, x]", "d_model: 'x' must be a positive integer"),
        ("pos: [rope, nope]", r"pos: 'nope' is not allowed \(allowed: rope, alibi, learned\)"),
        ("layer: {n_heads: [2], kv_ratio: [true]}", "layer.kv_ratio: True must be a positive integer"),
        ("layer: {n_heads: [2], attention: [sliding]}", "layer.window: missing: attention choices include 'sliding'"),
        ("layer: {n_heads: [2], window: [8]}", "layer.window: given, but attention choices have no 'sliding'"),
        ("layer: {n_heads: [2], attention: [sliding], window: [64]}", "layer.window: 64 must be < max_seq_len=64"),
        ("layer: {n_heads: [3]}", "layer.head_dim: 'auto' needs d_model divisible by n_heads"),
        ("layer: {n_heads: [2], ffn: [moe], n_experts: [4], top_k: [8], expert_mult: [1]}",
         "layer.top_k: .* every choice must be <= the smallest n_experts 4"),
        ("layer: {n_heads: [2], head_dim: [7]}", "impossible layer .* head_dim=7 must be even with RoPE"),
        ("n_layers: {min: 3, max: 1}", "n_layers: range .* needs integers with min <= max"),
        ("constraints: {max_parms: 3}", r"constraints.max_parms: unknown key \(allowed: min_params"),
        ("uniform: [d_model]", "uniform: .* must be a list of per-layer keys"),
        ("kind: vision", "kind: 'vision' is not a known space kind"),
        ("d_model: [64\n", "not valid YAML"),
        ("vocab_size: 1000000000000", "vocab_size: 1,000,000,000,000 is too large \\(at most 16,777,216\\)"),
        ("vocab_size: 1e12", "vocab_size: 1,000,000,000,000 is too large"),
        ("vocab_size: 1.5", "vocab_size: 1.5 must be a single int"),
        ("max_seq_len: 0", "max_seq_len: 0 must be positive"),
        ("d_model: {min: 1, max: 1000000000}", "d_model: range .* has 1,000,000,000 values \\(at most 1024\\)"),
        ("d_model: [10000000]", "d_model: 10,000,000 is too large \\(at most 65,536\\)"),
        ("n_layers: [5000]", "n_layers: 5,000 is too large \\(at most 1,024\\)"),
        ("layer: {n_heads: [2], ffn_hidden: [100000000]}", "layer.ffn_hidden: 100,000,000 is too large"),
        ("layer: {n_heads: [2], ffn_mult: [.inf]}", "layer.ffn_mult: inf must be a positive \\(finite\\) number"),
        ("layer: {n_heads: [2], ffn_mult: [.nan]}", "layer.ffn_mult: nan must be a positive \\(finite\\) number"),
        ("layer: {n_heads: [2], head_dim: [100000]}", "layer.head_dim: 100000 must be 'auto' .* in 1..4096"),
        ("uniform: [activation, activation]", "uniform: .* names a key twice"),
        ("name: ''", "name: must be a non-empty string"),
        ("rope_base: [1]", "rope_base: 1 must be a \\(finite\\) number > 1"),
        ("constraints: {min_params: 5, max_params: 3}", "constraints.min_params: 5 must be <= max_params 3"),
    ],
)
def test_malformed_spaces_name_file_and_key(tmp_path, text: str, message: str) -> None:
    base = {"vocab_size": 10, "max_seq_len": 64, "d_model": [64], "n_layers": [2], "layer": {"n_heads": [2]}}
    lines = [f"{k}: {json.dumps(v)}" for k, v in base.items() if not text.startswith(k)]
    path = write(tmp_path, "\n".join(lines) + "\n" + text + "\n", "bad.yaml")
    with pytest.raises(SpaceError, match=f"bad.yaml.*{message}"):
        load_space(path)


def test_missing_space_file(tmp_path) -> None:
    with pytest.raises(SpaceError, match="nope.yaml: file not found"):
        load_space(tmp_path / "nope.yaml")


def test_cli_validate_show_sample(tmp_path, capsys) -> None:
    assert main(["space", "validate", "search_spaces/tiny.yaml"]) == 0
    assert main(["space", "show", "moe"]) == 0
    out = capsys.readouterr().out
    assert "n_experts" in out and "distinct candidates" in out
    assert main(["space", "sample", "tiny", "--seed", "4", "--out", str(tmp_path / "a.json")]) == 0
    assert Architecture.load(tmp_path / "a.json") == load_space("tiny").sample(4)
    bad = write(tmp_path, "vocab_size: 10\nmax_seq_len: 8\nd_model: [16]\nn_layers: []\nlayer: {n_heads: [2]}\n")
    assert main(["space", "validate", str(bad)]) == 2
    assert "n_layers: empty choice list" in capsys.readouterr().err


def test_cli_error_has_no_traceback(tmp_path) -> None:
    bad = write(tmp_path, "vocab_size: 10\nmax_seq_len: 8\nd_model: [16]\nn_layers: [1]\nlayer: {n_heads: [2], x: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "llmnas", "space", "validate", str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("llmnas: error:") and "Traceback" not in proc.stderr
    assert "layer.x: unknown key" in proc.stderr
