"""The seventh supernet round's rule (eval/supernet/round7.py, results/round7/RULE.md): the choice on the pooled
sets, its tie-breaks, the one look at the fresh set, and the committed record against the rule."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture()
def round7(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from eval.supernet import round7 as module

    return module


def entry(cost: float, tau: float | None) -> dict:
    e = {"variant": "v", "cost": cost, "sets": {}}
    if tau is not None:
        e["pooled"] = {"n": 60, "inherited": {"kendall_tau": 0.5, "spearman_rho": 0.6},
                       "finetuned": {"kendall_tau": tau, "spearman_rho": 0.9}}
    return e


def test_the_highest_pooled_tau_wins_and_ties_at_three_decimals_go_to_the_cheaper_then_the_earlier(round7) -> None:
    assert round7.winner({"K0": entry(19.4, 0.80), "K1": entry(19.4, 0.81), "K2": entry(26.6, 0.79)}) == "K1"
    # 0.8091 and 0.8094 are equal at three decimals: the cheaper K0 wins over K2
    assert round7.winner({"K0": entry(19.4, 0.8091), "K2": entry(26.6, 0.8094)}) == "K0"
    # equal cost and tau: the earlier candidate (the incumbent) wins
    assert round7.winner({"K0": entry(19.4, 0.8), "K1": entry(19.4, 0.8)}) == "K0"
    # no choice until every candidate is measured
    assert round7.winner({"K0": entry(19.4, 0.9), "K1": entry(19.4, None)}) is None


def test_cost_counts_the_supernets_subnet_steps_over_the_searched_architectures_plus_fine_tuning(round7) -> None:
    assert round7.cost("split_pos_balanced") == pytest.approx(3 * 600 * 8 / 1000 + 5)  # 19.4 steps
    assert round7.cost("split_pos_balanced_x12") == pytest.approx(3 * 600 * 12 / 1000 + 5)  # 26.6 steps
    assert 600 / round7.cost("split_pos_balanced_x12") >= 20  # every candidate keeps the 20x budget


def test_the_fresh_set_is_looked_at_once(round7, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(round7, "OUT", tmp_path)
    monkeypatch.setattr(round7, "table", lambda: {"K0": entry(19.4, 0.7), "K1": entry(19.4, 0.9)})
    (tmp_path / "round7.json").write_text(json.dumps({"fresh": {"candidate": "K0"}}))
    monkeypatch.setattr(sys, "argv", ["round7.py", "--fresh"])
    with pytest.raises(SystemExit, match="already measured with K0; the rule allows one look"):
        round7.main()
    monkeypatch.setattr(round7, "table", lambda: {"K0": entry(19.4, 0.7), "K1": entry(19.4, None)})
    with pytest.raises(SystemExit, match="not every candidate is measured"):
        round7.main()


def test_the_committed_record_follows_the_rule(round7) -> None:
    """The committed choice is what the rule gives on the committed per-set files, and the fresh set was scored
    with that choice only."""
    record = json.loads((REPO / "eval" / "supernet" / "results" / "round7" / "round7.json").read_text())
    assert record["chosen"] == round7.winner(record["candidates"])
    assert record["fresh"]["candidate"] == record["chosen"] and record["fresh"]["n"] == 30
    fresh = json.loads((round7.OUT / "fresh" / "supernet-finetune.json").read_text())["finetune"]
    assert list(fresh["runs"]) == [round7.SCORER, "scratch 5 steps"]  # one scorer (and its control), one look
    # the fresh architectures are none of the pooled sets'
    ids = {s: {r["arch_id"] for r in json.loads((f / "supernet-scratch.json").read_text())["scratch"]}
           for s, f in {"tuning": round7.SETS["tuning"][1], "main": round7.SETS["main"][1],
                        "fresh": round7.FRESH_TRUTH}.items()}
    assert len(ids["fresh"]) == 30 and not ids["fresh"] & (ids["tuning"] | ids["main"])


# ---------------------------------------------------------------------- the eighth round (eval/supernet/round8.py)
@pytest.fixture()
def round8(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from eval.supernet import round8 as module

    return module


def pooled(**taus: float) -> dict:
    return {"sets": {}, "pooled": {"n": 90, **{k: {"kendall_tau": t, "spearman_rho": 0.9} for k, t in taus.items()}}}


def test_round8_candidates_keep_the_20x_budget_and_ties_go_to_the_cheaper(round8) -> None:
    assert all(600 / round8.cost(k) >= 20 for k in round8.CANDIDATES)
    assert round8.cost("F0") == pytest.approx(14.4) and round8.cost("F3") == pytest.approx(29.4)
    taus = {"F0": 0.70, "F1": 0.71, "F2": 0.72, "F3": 0.72, "F4": 0.60}
    assert round8.winner(pooled(**taus)) == "F2"  # F2 and F3 tie; F2 is cheaper
    assert round8.winner(pooled(**{**taus, "F0": 0.7204})) == "F0"  # a tie at three decimals: the cheapest
    assert round8.winner({"sets": {}, "pooled": None}) is None
    assert round8.scorer("F0") == "supernet" and round8.scorer("F2") == "supernet + 10 steps at lr 0.0003"


def test_round8_fresh_set_is_looked_at_once(round8, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(round8, "OUT", tmp_path)
    monkeypatch.setattr(round8, "table", lambda: pooled(F0=0.7, F1=0.8, F2=0.1, F3=0.1, F4=0.1))
    (tmp_path / "round8.json").write_text(json.dumps({"fresh": {"candidate": "F0"}}))
    monkeypatch.setattr(sys, "argv", ["round8.py", "--fresh"])
    with pytest.raises(SystemExit, match="already measured with F0; the rule allows one look"):
        round8.main()
    monkeypatch.setattr(sys, "argv", ["round8.py", "--sets", "fresh2028"])
    with pytest.raises(SystemExit, match="unknown set 'fresh2028'"):  # the fresh set is never a choosing set
        round8.main()


# ---------------------------------------------------------------------- the ninth round (eval/supernet/round9.py)
@pytest.fixture()
def round9(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from eval.supernet import round9 as module

    return module


def held_out(**taus: float) -> dict:
    return {k: {"sets": {}, "mean_tau": t, "coefficients": 0} for k, t in taus.items()}


def test_round9_highest_held_out_tau_wins_and_ties_go_to_fewer_coefficients(round9) -> None:
    assert [round9.coefficients(k) for k in round9.CANDIDATES] == [0, 3, 4, 5]
    assert round9.winner(held_out(C0=0.77, CD=0.82, CP=0.79, CDP=0.83)) == "CDP"
    assert round9.winner(held_out(C0=0.77, CD=0.8204, CP=0.79, CDP=0.8196)) == "CD"  # equal at three decimals
    assert round9.winner(held_out(C0=0.8, CD=0.8, CP=0.8, CDP=0.8)) == "C0"


def test_round9_each_held_out_set_is_scored_by_a_calibration_fitted_without_it(round9, monkeypatch) -> None:
    """Leave one set out is what it says: the fit for a held-out set never sees that set's architectures."""
    seen = []
    fit = round9.fit

    def spy(key, train):
        seen.append((key, {r["arch_id"] for r in train}))
        return fit(key, train)

    monkeypatch.setattr(round9, "fit", spy)
    results = round9.loso()
    sets = {s: {r["arch_id"] for r in round9.rows(round9.SCORED / s)} for s in round9.SETS}
    assert all(len(ids) == 30 for ids in sets.values())
    for i, (_, train) in enumerate(seen):
        held = round9.SETS[i % len(round9.SETS)]
        assert len(train) == 90 and not train & sets[held]
    assert results["C0"]["sets"]["main"]["kendall_tau"] == pytest.approx(
        json.loads((round9.SCORED / "round8.json").read_text())["candidates"]["sets"]["main"]["F0"]["kendall_tau"])


def test_round9_committed_record_and_calibration_follow_the_rule(round9) -> None:
    """The committed choice is the rule's on the committed scores; calibration.json is the winner refitted on all
    120 (the shipped recipe no longer carries it: the tenth round's fresh set did not bear it out)."""
    record = json.loads((round9.OUT / "round9.json").read_text())
    results = round9.loso()
    assert record["chosen"] == round9.winner(results)
    for key, e in results.items():
        assert e["mean_tau"] == pytest.approx(record["candidates"][key]["mean_tau"])
    committed = json.loads((round9.OUT / "calibration.json").read_text())
    refit = round9.final(record["chosen"]).to_dict()
    assert refit["offsets"].keys() == committed["offsets"].keys() == {"pos"}
    assert [refit[k] for k in ("intercept", "inherited", "per_layer")] == pytest.approx(
        [committed[k] for k in ("intercept", "inherited", "per_layer")], abs=1e-9)
    assert refit["offsets"]["pos"] == pytest.approx(committed["offsets"]["pos"], abs=1e-9)
    if record["fresh"] is not None:  # one look, with the winner, at 30 architectures none of the others have
        assert record["fresh"]["candidate"] == record["chosen"] and record["fresh"]["n"] == 30
        assert record["fresh"]["calibration"] == committed
        fresh = {r["arch_id"] for r in round9.rows(round9.OUT / round9.FRESH[0])}
        labelled = {r["arch_id"] for s in round9.SETS for r in round9.rows(round9.SCORED / s)}
        assert len(fresh) == 30 and not fresh & labelled


def test_round9_from_search_record_is_what_its_calibration_gives(round9) -> None:
    """The record of the calibration fitted on a from-scratch search's trials (llmnas supernet calibrate --out) is
    recomputed from the committed files: its figures on every set come from that calibration."""
    record = json.loads((round9.OUT / "round9.json").read_text())
    path = round9.OUT / "from_search.json"
    if "from_search" not in record:
        pytest.skip("no from-search calibration recorded yet (round9.py --from-search)")
    again = round9.from_search(path)
    assert again["n"] == record["from_search"]["n"] >= 20
    for s, e in again["sets"].items():
        for k in ("calibrated", "inherited"):
            assert e[k]["kendall_tau"] == pytest.approx(record["from_search"]["sets"][s][k]["kendall_tau"])
    assert again["sets"]["all five"]["inherited"]["kendall_tau"] > 0.5  # the supernet's own signal is there


# ---------------------------------------------------------------------- the tenth round (eval/supernet/round10.py)
@pytest.fixture()
def round10(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from eval.supernet import round10 as module

    return module


def test_round10_budget_and_tie_rule(round10) -> None:
    assert round10.cost("R0") == pytest.approx(14.4) and round10.cost("R1") == pytest.approx(25.2)
    assert all(600 / round10.cost(k) >= 20 for k in round10.CANDIDATES)  # both within the 20x
    e = lambda tau, key: {"mean_tau": tau, "cost": round10.cost(key)}  # noqa: E731
    assert round10.winner({"R0": e(0.82, "R0"), "R1": e(0.83, "R1")}) == "R1"
    assert round10.winner({"R0": e(0.8204, "R0"), "R1": e(0.8196, "R1")}) == "R0"  # a tie: the cheaper
    assert round10.winner({"R0": e(0.82, "R0"), "R1": None}) is None  # no choice until both are scored
    # R0's labelled scores are the recipe supernet's, already measured by the eighth and ninth rounds
    assert round10.scores_folder("R0", "main") == round10.RESULTS / "round8" / "main"
    assert round10.scores_folder("R0", "fresh2029") == round10.RESULTS / "round9" / "fresh2029"
    assert round10.scores_folder("R1", "fresh2027") == round10.OUT / "R1" / "fresh2027"


def test_round10_committed_record_follows_the_rule(round10) -> None:
    record_path = round10.OUT / "round10.json"
    if not record_path.exists():
        pytest.skip("round10.py has not been run")
    record = json.loads(record_path.read_text())
    results = {k: round10.loso(k) for k in round10.CANDIDATES}
    assert record["chosen"] == round10.winner(results)
    for key, e in results.items():
        if e is None:  # not scored on every set yet, in the record as here
            assert record["candidates"][key] is None
        else:
            assert e["mean_tau"] == pytest.approx(record["candidates"][key]["mean_tau"])
    if record["fresh"] is not None:
        assert record["fresh"]["candidate"] == record["chosen"] and record["fresh"]["n"] == 30
        from eval.supernet.round9 import rows

        fresh = {r["arch_id"] for r in rows(round10.scores_folder(record["chosen"], round10.FRESH[0]))}
        labelled = {r["arch_id"] for s in round10.SETS for r in rows(round10.scores_folder("R0", s))}
        assert len(fresh) == 30 and len(labelled) == 150 and not fresh & labelled


# ---------------------------------------------------------------------- the eleventh round (eval/supernet/round11.py)
@pytest.fixture()
def round11(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from eval.supernet import round11 as module

    return module


def test_round11_candidates_and_tie_rule(round11) -> None:
    from eval.supernet import budget

    # the same training as the recipe's supernet; only the weight sharing differs
    def sets(variant: str) -> dict[str, str]:
        args = budget.overrides(variant)
        assert args[::2] == ["--set"] * (len(args) // 2)
        return dict(a.split("=", 1) for a in args[1::2])

    base = sets("split_pos_balanced")
    incumbent_folder = base.pop("supernet.out")
    for key in ("U1", "U2"):
        extra = sets(round11.CANDIDATES[key])
        assert extra.pop("supernet.unshare") and extra.pop("supernet.out") != incumbent_folder
        assert extra == base
    assert "supernet.unshare=[n_heads,activation]" in budget.overrides(round11.CANDIDATES["U1"])
    assert "supernet.unshare=[n_heads,attention,activation]" in budget.overrides(round11.CANDIDATES["U2"])
    sizes = [round11.weights(k) for k in round11.CANDIDATES]
    assert sizes == sorted(sizes) and sizes[0] < sizes[1] < sizes[2]
    e = lambda tau, key: {"mean_tau": tau, "weights": round11.weights(key)}  # noqa: E731
    assert round11.winner({"U0": e(0.78, "U0"), "U1": e(0.80, "U1"), "U2": e(0.79, "U2")}) == "U1"
    assert round11.winner({"U0": e(0.7804, "U0"), "U1": e(0.7796, "U1"), "U2": e(0.78, "U2")}) == "U0"  # tie
    assert round11.winner({"U0": e(0.78, "U0"), "U1": e(0.8104, "U1"), "U2": e(0.8096, "U2")}) == "U1"  # tie
    assert round11.winner({"U0": e(0.78, "U0"), "U1": None, "U2": e(0.9, "U2")}) is None
    # U0's scores are the recipe supernet's, measured by the earlier rounds; the sixth set is the fourth fresh one
    assert round11.scores_folder("U0", "fresh2030") == round11.RESULTS / "round10" / "R0" / "fresh2030"
    assert round11.scores_folder("U1", "fresh2028") == round11.OUT / "U1" / "fresh2028"


def test_round11_committed_record_follows_the_rule(round11) -> None:
    record_path = round11.OUT / "round11.json"
    if not record_path.exists():
        pytest.skip("round11.py has not been run")
    record = json.loads(record_path.read_text())
    results = {k: round11.evaluate(k) for k in round11.CANDIDATES}
    assert record["chosen"] == round11.winner(results)
    for key, e in results.items():
        if e is None:
            assert record["candidates"][key] is None
        else:
            assert e["mean_tau"] == pytest.approx(record["candidates"][key]["mean_tau"])
    if record["fresh"] is not None:
        from eval.supernet.round9 import rows

        assert record["fresh"]["candidate"] == record["chosen"] and record["fresh"]["n"] == 30
        fresh = {r["arch_id"] for r in rows(round11.scores_folder(record["chosen"], round11.FRESH[0]))}
        labelled = {r["arch_id"] for s in round11.SETS for r in rows(round11.scores_folder("U0", s))}
        assert len(fresh) == 30 and len(labelled) == 180 and not fresh & labelled
