from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest

from llmnas.errors import SpaceError
from llmnas.space import load_space
from llmnas.space.nb201 import EDGES, N_CELLS, OPS, PARAM_NAMES, NB201Cell, NB201Space
from tests.conftest import shared_data

ALL_OPS = list(itertools.product(OPS, repeat=len(EDGES)))


def test_every_cell_round_trips_string_params_and_code() -> None:
    space = NB201Space()
    strings = set()
    for ops in ALL_OPS:
        cell = NB201Cell(ops)
        text = cell.to_str()
        strings.add(text)
        assert NB201Cell.from_str(text) == cell
        params = space.encode(cell)
        assert list(params) == list(PARAM_NAMES)
        assert space.decode(params) == cell
        assert space.params_from_str(text) == params and space.str_from_params(params) == text
        assert NB201Cell.from_code(cell.code) == cell
    assert len(strings) == N_CELLS == space.size() == 15_625


def test_official_index_and_unique_string_match_the_benchmark_rows() -> None:
    from llmnas.benchmarks.nb201 import load_nb201

    path = shared_data("nasbench201/nb201_test_acc_200ep.csv")
    table = load_nb201(path.parent)
    space = NB201Space()
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(table) == N_CELLS
    for index, row in enumerate(rows):  # the row number is the official index
        cell = NB201Cell.from_str(row["ArchitectureString"])
        params = space.encode(cell)
        assert table.index_of(row["ArchitectureString"]) == table.index_of(cell) == table.index_of(params) == index
        assert table.cell(index) == cell
        assert cell.unique_str() == row["UniqueString"] == space.key(params)
    assert len({r["UniqueString"] for r in rows}) == 6466  # isomorphism classes, as in the paper's count


def test_keys_identify_isomorphic_cells_and_active_edges_are_those_that_matter() -> None:
    space = NB201Space()
    a = space.params_from_str("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_1x1~2|")
    b = space.params_from_str("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|")
    assert space.key(a) != space.key(b)
    # node 1 receives only `none`: the edges out of it add zeros whatever their op
    c = space.params_from_str("|none~0|+|skip_connect~0|nor_conv_3x3~1|+|nor_conv_1x1~0|avg_pool_3x3~1|skip_connect~2|")
    d = space.params_from_str("|none~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_1x1~0|nor_conv_3x3~1|skip_connect~2|")
    assert space.key(c) == space.key(d)
    assert space.active(c) == ["node1.in0", "node2.in0", "node3.in0", "node3.in2"]
    plain = NB201Space(identify_isomorphic=False)
    assert plain.key(c) != plain.key(d) and plain.active(c) == list(PARAM_NAMES)


def test_mutations_and_neighbours_change_the_key() -> None:
    space = NB201Space()
    rng = np.random.default_rng(0)
    for _ in range(200):
        params = space.sample_params(rng)
        child = space.mutate_params(params, rng)
        assert space.key(child) != space.key(params)
        assert sum(child[n] != params[n] for n in PARAM_NAMES) == 1
        keys = [space.key(n) for n in space.neighbours(params)]
        assert len(set(keys)) == len(keys) and space.key(params) not in keys


def test_restricted_ops() -> None:
    space = NB201Space(ops=["nor_conv_3x3", "skip_connect"])
    assert space.ops == ("skip_connect", "nor_conv_3x3") and space.size() == 64
    with pytest.raises(ValueError, match="not allowed"):
        space.decode(dict.fromkeys(PARAM_NAMES, "none"))


def test_shipped_yaml_loads() -> None:
    space = load_space("nasbench201")
    assert isinstance(space, NB201Space) and space.size() == N_CELLS and space.identify_isomorphic


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "nasbench201", "opz": []}, "unknown key 'opz'"),
        ({"kind": "nasbench201", "ops": "none"}, "ops='none' must be a list"),
        ({"kind": "nasbench201", "ops": []}, "ops must not be empty"),
        ({"kind": "nasbench201", "ops": ["conv"]}, "unknown operation 'conv'"),
        ({"kind": "nasbench201", "ops": ["none", "none"]}, "twice"),
        ({"kind": "nasbench201", "identify_isomorphic": "yes"}, "identify_isomorphic='yes' must be a bool"),
        ({"kind": "transformer"}, "kind='transformer' must be 'nasbench201'"),
        (["kind"], "must be a mapping"),
    ],
)
def test_from_config_errors_name_file_and_key(data, message: str) -> None:
    with pytest.raises(SpaceError, match="spaces/x.yaml") as e:
        NB201Space.from_config(data, "spaces/x.yaml")
    assert message in str(e.value)


def test_load_space_reports_the_file(tmp_path) -> None:
    path = tmp_path / "nb.yaml"
    path.write_text("kind: nasbench201\nops: [none, conv5x5]\n")
    with pytest.raises(SpaceError, match=rf"{path}.*conv5x5"):
        load_space(path)


@pytest.mark.parametrize("bad", ["|nor_conv_3x3~0|+|none~0|", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                                 "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "nor_conv_3x3"])
def test_malformed_strings_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        NB201Cell.from_str(bad)
