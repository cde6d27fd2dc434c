"""The feasibility check of a space's constraints, checked against brute-force enumeration."""

from __future__ import annotations

import itertools
import textwrap

import numpy as np
import pytest

from llmnas.cli import main
from llmnas.errors import SpaceError
from llmnas.space import Constraints, TransformerSpace, load_space
from llmnas.space import feasibility as feas
from llmnas.space.feasibility import QUANTITIES
from tests.space.test_transformer_space import SMALL_SPACE

# Two-layer heterogeneous space with MoE and dense layers, uniform keys, windows and positions: 6,264
# distinct architectures, few enough to enumerate (the space tests' own).
ENUM_SPACE = SMALL_SPACE

# Three layers, two widths, untied embeddings: depth and width both matter.
DEEP_SPACE = """
name: deep
vocab_size: 40
max_seq_len: 16
d_model: [16, 32]
n_layers: [1, 3]
tie_embeddings: [true, false]
layer:
  n_heads: [2, 4]
  kv_ratio: [1, 2]
  ffn_mult: [1, 3]
  activation: [gelu, swiglu]
"""
LIMIT_COLUMN = {"min_params": "params", "max_params": "params", "max_active_params": "active_params",
                "max_non_embedding_params": "non_embedding_params", "max_flops_per_token": "flops_per_token",
                "max_kv_cache_bytes_per_token": "kv_cache_bytes_per_token"}


def enumerate_space(space: TransformerSpace) -> np.ndarray:
    """Every distinct architecture's measured quantities (rows), by brute force over all decisions."""
    names, rows = list(space.choices()), {}
    for values in itertools.product(*space.choices().values()):
        arch = space.decode(dict(zip(names, values, strict=True)))
        if arch.id not in rows:
            m = Constraints.measure(arch)
            rows[arch.id] = [m[q] for q in QUANTITIES]
    return np.array(list(rows.values()))


@pytest.fixture(scope="module", params=[ENUM_SPACE, DEEP_SPACE], ids=["enum", "deep"])
def brute(request, tmp_path_factory) -> tuple[TransformerSpace, np.ndarray]:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(textwrap.dedent(request.param))
    space = load_space(path)
    rows = enumerate_space(space)
    assert len(rows) == space.size()
    return space, rows


def test_ranges_equal_brute_force(brute) -> None:
    space, rows = brute
    ranges = space.feasibility().ranges
    for i, q in enumerate(QUANTITIES):
        assert ranges[q] == (rows[:, i].min(), rows[:, i].max()), q


def random_limits(rows: np.ndarray, rng: np.random.Generator) -> dict[str, int]:
    """One to three limits: loose, tight, or (for params) a narrow window that may fall between values."""
    limits = {}
    for key in rng.choice(list(LIMIT_COLUMN), size=int(rng.integers(1, 4)), replace=False):
        values = np.unique(rows[:, QUANTITIES.index(LIMIT_COLUMN[key])])
        v = int(rng.choice(values)) + int(rng.integers(-2, 3))
        limits[key] = max(1, v)
    if "min_params" in limits and rng.random() < 0.5:  # a window of a few parameters: gaps are common
        limits["max_params"] = limits["min_params"] + int(rng.integers(0, 40))
    return limits


def test_verdicts_equal_brute_force(brute) -> None:
    space, rows = brute
    rng = np.random.default_rng(0)
    seen = {True: 0, False: 0}
    for _ in range(300):
        limits = random_limits(rows, rng)
        ok = np.ones(len(rows), dtype=bool)
        for key, bound in limits.items():
            col = rows[:, QUANTITIES.index(LIMIT_COLUMN[key])]
            ok &= col >= bound if key.startswith("min") else col <= bound
        constrained = space.with_constraints(Constraints(**limits))
        if ok.any():
            witness = constrained.check_feasible()
            assert witness is not None and not constrained.constraints.violations(witness), limits
            assert constrained.is_feasible(constrained.encode(witness))
        else:
            with pytest.raises(SpaceError, match="constraints: "):
                constrained.check_feasible()
            assert constrained.feasibility().exhaustive
        seen[bool(ok.any())] += 1
    assert min(seen.values()) > 30  # both verdicts were exercised


def test_shipped_spaces_are_feasible() -> None:
    for name in ("tiny", "tiny_char", "small", "moe", "nasbench201"):
        space = load_space(name)
        witness = space.check_feasible()
        if isinstance(space, TransformerSpace) and space.constraints.limits():
            assert not space.constraints.violations(witness)


def write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_messages_name_the_limit_and_the_range(tmp_path) -> None:
    space = load_space(write(tmp_path, ENUM_SPACE))
    with pytest.raises(SpaceError, match=r"space.yaml: constraints: max_params=100 cannot be met: the smallest "
                                         r"architecture of space 'enum' has params [\d,]+ \(the space spans"):
        space.with_constraints(Constraints(max_params=100)).check_feasible()
    with pytest.raises(SpaceError, match="min_params=10,000,000 cannot be met: the largest architecture"):
        space.with_constraints(Constraints(min_params=10_000_000)).check_feasible()
    lo, hi = space.feasibility().ranges["params"]
    kv_lo = space.feasibility().ranges["kv_cache_bytes_per_token"][0]
    both = Constraints(min_params=hi, max_kv_cache_bytes_per_token=kv_lo)  # the largest has the most KV cache
    with pytest.raises(SpaceError, match="no architecture of space 'enum' meets min_params=.*, max_kv_cache_bytes_"
                                         "per_token=.* together: none does \\(each alone: params"):
        space.with_constraints(both).check_feasible()


def test_sampling_falls_back_to_a_feasible_architecture_when_draws_miss(tmp_path) -> None:
    space = load_space(write(tmp_path, ENUM_SPACE))
    lo, _ = space.feasibility().ranges["params"]
    tight = space.with_constraints(Constraints(max_params=lo))  # only the smallest architectures
    tight.max_tries = 1
    for seed in range(5):
        params = tight.sample_params(seed)
        assert tight.is_feasible(params) and tight.decode(params).param_counts().total == lo


def test_without_exhaustive_search_random_draws_find_a_witness(tmp_path, monkeypatch) -> None:
    space = load_space(write(tmp_path, DEEP_SPACE))
    lo, hi = space.feasibility().ranges["params"]
    monkeypatch.setattr(feas, "MAX_STATES", 0)  # every depth's search gives up at once
    loose = space.with_constraints(Constraints(max_params=hi))
    assert not loose.feasibility().exhaustive and loose.check_feasible() is not None
    params = set(enumerate_space(space)[:, 0].tolist())
    middle = next(v for v in range((lo + hi) // 2, hi) if v not in params)  # no architecture has it
    gap = space.with_constraints(Constraints(min_params=middle, max_params=middle))
    with pytest.raises(SpaceError, match=r"none was found \(2000 random draws; the space is too large"):
        gap.check_feasible()


def test_cli_validate_and_sample_refuse_an_infeasible_space(tmp_path, capsys) -> None:
    path = write(tmp_path, ENUM_SPACE + "constraints: {max_params: 100}\n")
    assert main(["space", "validate", str(path)]) == 2
    assert "constraints: max_params=100 cannot be met" in capsys.readouterr().err
    assert main(["space", "sample", str(path), "--out", str(tmp_path / "a.json")]) == 2
    assert "max_params=100 cannot be met" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
    assert main(["space", "show", str(path)]) == 0
    assert "feasible: no; max_params=100 cannot be met" in capsys.readouterr().out
    assert main(["space", "validate", "tiny"]) == 0
    assert "constraints met, e.g. by arch" in capsys.readouterr().out


def test_mutation_under_tight_constraints_finds_the_feasible_neighbours(tmp_path) -> None:
    space = load_space(write(tmp_path, DEEP_SPACE))
    values, counts = np.unique(enumerate_space(space)[:, 0], return_counts=True)

    def only(n_params: int) -> TransformerSpace:
        tight = space.with_constraints(Constraints(min_params=n_params, max_params=n_params))
        tight.max_tries = 1  # random tries miss: the fallback is what is tested
        return tight

    pairs = 0
    for n_params in values[counts == 2]:  # exactly two architectures have this many parameters
        tight = only(int(n_params))
        start = tight.sample_params(0)
        for other in tight.neighbours(start):  # when the two differ in one decision, mutation finds the other
            assert tight.key(tight.mutate_params(start, 0)) == tight.key(other)
            pairs += 1
    assert pairs > 5


def test_mutation_of_an_isolated_architecture_is_a_clear_error(tmp_path) -> None:
    """Width and KV heads both change the size: the window keeps (32 wide, MHA) and (64 wide, GQA), two
    decisions apart, so neither has a feasible one-decision neighbour."""
    text = "vocab_size: 50\nmax_seq_len: 16\nd_model: [32, 64]\nn_layers: [1]\n"
    text += "layer: {n_heads: [2], kv_ratio: [1, 2]}\n"
    space = load_space(write(tmp_path, text))
    size = {(d, r): space.decode({"d_model": d, "L00.kv_ratio": r}).param_counts().total for d in (32, 64)
            for r in (1, 2)}
    assert size[32, 2] < size[32, 1] < size[64, 2] < size[64, 1]
    both = space.with_constraints(Constraints(min_params=size[32, 1], max_params=size[64, 2]))
    start = {"d_model": 32, "L00.kv_ratio": 1}
    assert both.is_feasible(start) and not list(both.neighbours(start))
    with pytest.raises(SpaceError, match="no candidate one decision away from .* meets the constraints"):
        both.mutate_params(start, 0)
