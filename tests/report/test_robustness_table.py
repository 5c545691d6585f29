"""The robustness table and readings (mmie/report/robustness.py) against hand-computed answers."""
import math

import numpy as np
import pytest

from mmie.attacks import point
from mmie.report import robustness as rob


def result(attack, arm, seed, points, method="x"):
    return {"attack": attack, "arm": arm, "seed": seed, "method": method, "points": points}


def relearn_curve(arm, seed, rates: dict[int, list[int]]):
    return result("relearn", arm, seed, [point(k, "forget", "target_rate", [f"p{i}" for i in range(len(v))], v)
                                         for k, v in rates.items()])


def test_estimates_pool_the_seeds_and_the_interval_covers_them():
    res = [relearn_curve("lora", 0, {0: [0, 0, 0, 1], 5: [1, 1, 0, 1]}),
           relearn_curve("lora", 1, {0: [0, 0, 0, 0], 5: [1, 1, 1, 1]})]
    df = rob.table(res, n_boot=500, rng_seed=0, level=0.9, base=None, oracle=None)
    row = df[(df["strength"] == 5)].iloc[0]
    assert row["estimate"] == pytest.approx(7 / 8)              # the pooled mean of both seeds' items
    assert row["ci_low"] <= row["estimate"] <= row["ci_high"] and row["n_seeds"] == 2 and row["n_items"] == 4
    assert list(df["strength"]) == [0, 5] and row["seeds"] == "0 1"


def test_perplexity_points_are_token_weighted():
    res = [result("quantize", "base", 0, [point("full", "retain", "ppl", ["a", "b"], [2.0, 6.0], [1.0, 3.0],
                                                transform="exp")])]
    df = rob.table(res, n_boot=200, rng_seed=0, level=0.95, base="base", oracle=None)
    assert df.iloc[0]["estimate"] == pytest.approx(math.exp(8.0 / 4.0))
    assert df.iloc[0]["base"] == pytest.approx(math.exp(2.0))


def test_other_items_in_another_seed_are_refused():
    res = [relearn_curve("lora", 0, {0: [0, 1]}),
           result("relearn", "lora", 1, [point(0, "forget", "target_rate", ["p0", "other"], [0, 1])])]
    with pytest.raises(ValueError, match="other items"):
        rob.table(res, n_boot=100, rng_seed=0, level=0.95, base=None, oracle=None)


def test_steps_to_recover_and_the_suppressed_reading():
    """base's unattacked rate 1.0, half of it 0.5: the planted arm is back at 5 steps, the oracle never
    within 25: the arm reads as suppressed; the oracle does not."""
    ones, zeros = [1] * 4, [0] * 4
    res = [relearn_curve("base", 0, {0: ones, 5: ones, 25: ones}),
           relearn_curve("oracle", 0, {0: zeros, 5: zeros, 25: [1, 0, 0, 0]}),
           relearn_curve("planted", 0, {0: zeros, 5: [1, 1, 0, 0], 25: ones}),
           relearn_curve("removed", 0, {0: zeros, 5: zeros, 25: zeros})]
    df = rob.table(res, n_boot=100, rng_seed=0, level=0.95, base="base", oracle="oracle")
    assert rob.steps_to_recover(df, "planted", 1.0, 0.5) == (5.0, 25)
    assert rob.steps_to_recover(df, "oracle", 1.0, 0.5) == (None, 25)
    read = rob.readings(df, base="base", oracle="oracle", fraction=0.5).set_index("arm")
    assert read.loc["planted", "reading"].startswith("suppressed: ") and "after 5 relearning steps" in \
        read.loc["planted", "reading"] and "the oracle: > 25" in read.loc["planted", "reading"]
    assert not read.loc["oracle", "reading"].startswith("suppressed")
    assert not read.loc["removed", "reading"].startswith("suppressed")     # never back: as the oracle
    assert read.loc["removed", "value"] == math.inf and read.loc["planted", "value"] == 5.0


def test_probe_reading_takes_the_best_layer():
    pts = lambda acc: [point(layer, "probe", "target_recall", ["t0", "t1"], a) for layer, a in enumerate(acc)]  # noqa: E731
    res = [result("probe", "oracle", 0, pts([[0, 1], [0, 1]])), result("probe", "lora", 0, pts([[0, 1], [1, 1]]))]
    df = rob.table(res, n_boot=100, rng_seed=0, level=0.95, base=None, oracle="oracle")
    read = rob.readings(df, base=None, oracle="oracle", fraction=0.5).set_index("arm")
    assert read.loc["lora", "value"] == 1.0 and read.loc["lora", "oracle"] == 0.5
    assert "(layer 1)" in read.loc["lora", "reading"] and read.loc["lora", "reading"].startswith("target texts")


def test_quantize_strengths_sort_full_first_and_figure_draws():
    res = [result("quantize", "base", 0, [point(s, "forget", "target_rate", ["a"], [v]) for s, v in
                                          ((4, 1), ("full", 0), (8, 0))])]
    df = rob.table(res, n_boot=100, rng_seed=0, level=0.95, base="base", oracle=None)
    assert list(df["strength"]) == ["full", 8, 4]          # weakest to strongest attack
    fig = rob.figure(df, base="base", oracle=None, target="hi")
    assert len(fig.axes) == 1
    assert np.isfinite(df["estimate"]).all()


def test_an_arm_that_never_suppressed_is_not_called_suppressed():
    """An identity-like arm (its unattacked rate already at base's) has nothing to recover: no
    "suppressed" whatever the attack does; in-context and quantize follow the same rule."""
    def curve(attack, arm, rates):
        return result(attack, arm, 0, [point(k, "forget", "target_rate", ["a", "b"], v) for k, v in rates.items()])

    res = [curve("incontext", "base", {0: [1, 1], 2: [1, 1]}), curve("incontext", "oracle", {0: [0, 0], 2: [0, 0]}),
           curve("incontext", "identity", {0: [1, 0], 2: [1, 1]}), curve("incontext", "shallow", {0: [0, 0], 2: [1, 1]}),
           curve("quantize", "base", {"full": [1, 1], 8: [1, 1], 4: [1, 1]}),
           curve("quantize", "oracle", {"full": [0, 0], 8: [0, 0], 4: [0, 0]}),
           curve("quantize", "shallow", {"full": [0, 0], 8: [0, 0], 4: [1, 0]})]
    df = rob.table(res, n_boot=100, rng_seed=0, level=0.95, base="base", oracle="oracle")
    read = rob.readings(df, base="base", oracle="oracle", fraction=0.5).set_index(["attack", "arm"])
    assert read.loc[("incontext", "identity"), "reading"].startswith("not suppressed to begin with")
    assert not read.loc[("incontext", "identity"), "suppressed"]
    assert read.loc[("incontext", "shallow"), "suppressed"] and "with 2 in-context examples" in \
        read.loc[("incontext", "shallow"), "reading"]
    assert read.loc[("quantize", "shallow"), "suppressed"] and read.loc[("quantize", "shallow"), "value"] == 4
    assert "the oracle: not at 4 bit" in read.loc[("quantize", "shallow"), "reading"]
    assert not read.loc[("quantize", "oracle"), "suppressed"] and not read.loc[("incontext", "oracle"), "suppressed"]


def test_the_optional_gate_stops_a_suppressed_arm_only():
    """robustness.gate: the arm that reads as suppressed gets a failing robustness_relearn row and STOPs
    with the reading as its reason; an arm that stays removed passes the row and keeps its decision."""
    ones, zeros = [1] * 4, [0] * 4
    res = [relearn_curve("base", 0, {0: ones, 5: ones}), relearn_curve("oracle", 0, {0: zeros, 5: zeros}),
           relearn_curve("planted", 0, {0: zeros, 5: ones}), relearn_curve("removed", 0, {0: zeros, 5: zeros})]
    df = rob.table(res, n_boot=100, rng_seed=0, level=0.95, base="base", oracle="oracle")
    read = rob.readings(df, base="base", oracle="oracle", fraction=0.5)
    decisions = {a: {"decision": "PROCEED", "failing": [], "reasons": {}, "verdicts": {}} for a in
                 ("oracle", "planted", "removed")}
    rows: list[dict] = []
    rob.apply_gate(read, decisions, rows)
    assert {(r["arm"], r["gate"], r["passed"]) for r in rows} == {
        ("oracle", "robustness_relearn", True), ("planted", "robustness_relearn", False),
        ("removed", "robustness_relearn", True)}
    assert decisions["planted"]["decision"] == "STOP" and decisions["planted"]["failing"] == ["robustness_relearn"]
    assert decisions["planted"]["reasons"]["robustness_relearn"].startswith("suppressed: ")
    assert decisions["removed"]["decision"] == decisions["oracle"]["decision"] == "PROCEED"
