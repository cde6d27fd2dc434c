from __future__ import annotations

import importlib.util

import optuna
import pytest

from llmnas.errors import RecipeError
from llmnas.samplers import (
    SAMPLERS,
    RegularizedEvolutionSampler,
    ReinforceSampler,
    ThompsonSampler,
    build_sampler,
    sampler_options,
)
from llmnas.space.nb201 import NB201Space


def test_every_name_builds_its_sampler() -> None:
    expected = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler,
                "nsga2": optuna.samplers.NSGAIISampler, "evolution": RegularizedEvolutionSampler,
                "reinforce": ReinforceSampler, "thompson": ThompsonSampler}
    space = NB201Space()
    for name, cls in expected.items():
        sampler = build_sampler(name, space=space, directions=["minimize"], seed=1, options={})
        assert isinstance(sampler, cls)
        if hasattr(sampler, "space"):
            assert sampler.space is space
    assert set(expected) | {"gp"} == set(SAMPLERS)


def test_options_reach_the_constructor() -> None:
    s = build_sampler("evolution", space=None, directions=["minimize"], seed=0,
                      options={"population_size": 12, "sample_size": 4})
    assert (s.population_size, s.sample_size) == (12, 4)
    t = build_sampler("tpe", space=None, directions=["minimize"], seed=0, options={"n_startup_trials": 3})
    assert t._n_startup_trials == 3


def test_unknown_name_and_option_list_what_is_allowed() -> None:
    with pytest.raises(RecipeError, match=r"unknown sampler 'evo' \(allowed: random, tpe, nsga2, gp, evolution"):
        build_sampler("evo", space=None, directions=["minimize"], seed=0, options={})
    with pytest.raises(RecipeError, match=r"no option 'population'.*population_size, sample_size"):
        build_sampler("evolution", space=None, directions=["minimize"], seed=0, options={"population": 3})
    with pytest.raises(RecipeError, match="seed"):
        build_sampler("tpe", space=None, directions=["minimize"], seed=0, options={"seed": 3})
    assert "seed" not in sampler_options("tpe") and "space" not in sampler_options("thompson")


def test_bad_values_and_weights_become_recipe_errors() -> None:
    with pytest.raises(RecipeError, match="sampler 'evolution': population_size must be at least 2"):
        build_sampler("evolution", space=None, directions=["minimize"], seed=0, options={"population_size": 1})
    with pytest.raises(RecipeError, match="one number per objective"):
        build_sampler("thompson", space=None, directions=["minimize", "minimize"], seed=0, options={"weights": [1]})
    with pytest.raises(RecipeError, match="unknown direction"):
        build_sampler("random", space=None, directions=["down"], seed=0, options={})


def test_gp_needs_scipy() -> None:
    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(RecipeError, match="needs scipy"):
            build_sampler("gp", space=None, directions=["minimize"], seed=0, options={})
    else:
        assert isinstance(build_sampler("gp", space=None, directions=["minimize"], seed=0, options={}),
                          optuna.samplers.GPSampler)
