from __future__ import annotations

import optuna
import pytest

from llmnas.samplers import RegularizedEvolutionSampler
from llmnas.space.nb201 import PARAM_NAMES, NB201Space

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = NB201Space()
SCORE = {"nor_conv_3x3": 3.0, "nor_conv_1x1": 2.0, "skip_connect": 1.0, "avg_pool_3x3": 0.5, "none": 0.0}


def objective(trial: optuna.Trial) -> float:
    return sum(SCORE[o] for o in SPACE.suggest(trial).ops)


def test_children_are_one_active_decision_from_a_tournament_winner_of_the_last_p_trials() -> None:
    pop, sample = 8, 4
    study = optuna.create_study(
        direction="maximize", sampler=RegularizedEvolutionSampler(space=SPACE, population_size=pop,
                                                                  sample_size=sample, seed=0)
    )
    study.optimize(objective, n_trials=40)
    trials = study.trials
    for t in trials[pop:]:
        population = trials[t.number - pop : t.number]  # sequential: the P youngest completed trials
        parents = [p for p in population
                   if sum(p.params[n] != t.params[n] for n in PARAM_NAMES) == 1
                   and SPACE.key(p.params) != SPACE.key(t.params)]
        assert parents, f"trial {t.number} is not a one-decision mutation of its population"
        # the parent won a tournament of `sample` members: at most pop - sample members beat it
        best_parent = max(parents, key=lambda p: p.value)
        assert sum(p.value > best_parent.value for p in population) <= pop - sample
    assert max(t.value for t in trials) >= 16.0


def test_population_comes_from_the_study_so_a_second_sampler_agrees() -> None:
    study = optuna.create_study(direction="maximize",
                                sampler=RegularizedEvolutionSampler(space=SPACE, population_size=5, sample_size=2))
    study.optimize(objective, n_trials=12)
    a = RegularizedEvolutionSampler(space=SPACE, population_size=5, sample_size=2, seed=4)
    b = RegularizedEvolutionSampler(space=SPACE, population_size=5, sample_size=2, seed=4)
    frozen = study.ask()
    ft = study._storage.get_trial(frozen._trial_id)
    space_dists = a.infer_relative_search_space(study, ft)
    assert a.sample_relative(study, ft, space_dists) == b.sample_relative(study, ft, space_dists)


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError, match="population_size"):
        RegularizedEvolutionSampler(population_size=1)
    with pytest.raises(ValueError, match="sample_size"):
        RegularizedEvolutionSampler(population_size=4, sample_size=5)


def test_an_isolated_parent_is_not_an_error(tmp_path) -> None:
    """Constraints that leave one architecture with no feasible neighbour: mutating it finds nothing, and
    the sampler looks elsewhere instead of stopping the study."""
    import numpy as np

    from llmnas.space import Constraints, load_space

    (tmp_path / "s.yaml").write_text(
        "name: two\nvocab_size: 65\nmax_seq_len: 32\nd_model: [32, 48]\nn_layers: [1]\nlayer: {n_heads: [2]}\n")
    space = load_space(tmp_path / "s.yaml")
    small, large = sorted((space.sample(seed) for seed in range(20)), key=lambda a: a.param_counts().total)[::19]
    assert small.id != large.id
    only_small = space.with_constraints(Constraints(max_params=small.param_counts().total))
    sampler = RegularizedEvolutionSampler(space=only_small, seed=0)
    parent = only_small.encode(small)
    assert sampler.unseen_mutation(only_small, parent, set(), np.random.default_rng(0)) is None
