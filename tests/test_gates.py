"""Gates and decisions from per-prompt values (issue: statistics and gates)."""
import json

import numpy as np
import pytest

from mmie.gates import Results, decide, expand_gates, intervals

CFG = {"n_boot": 500, "rng_seed": 0, "level": 0.95, "alpha": 0.05, "correction": "holm"}
GATES = [{"name": "forget_rate", "metric": "target_rate", "set": "forget", "direction": "<=", "relative": "ratio",
          "threshold": 0.5},
         {"name": "retain_ppl", "metric": "ppl", "set": "retain", "direction": "<=", "relative": "ratio", "threshold": 1.1}]


def write(tmp_path, arm, seed, set_name, target=None, ppl=None, failures=None):
    n = 40
    rng = np.random.default_rng(seed)
    per = {"id": [f"p{i:02d}" for i in range(n)], "label": ["hi"] * n}
    metrics = {}
    if target is not None:
        per["target"] = (rng.random(n) < target).astype(int).tolist()
        metrics["target_rate"] = float(np.mean(per["target"]))
    if ppl is not None:
        per["ref_nll"] = (np.log(ppl) * 10 + rng.normal(0, 0.1, n)).tolist()
        per["ref_tokens"] = [10] * n
        metrics["ppl"] = float(np.exp(sum(per["ref_nll"]) / (10 * n)))
    rec = {"arm": arm, "seed": seed, "set": set_name, "metrics": metrics, "per_prompt": per,
           "failures": failures or {}}
    path = tmp_path / f"{arm}-{seed}-{set_name}.json"
    path.write_text(json.dumps(rec))
    return str(path)


@pytest.fixture()
def grid(tmp_path):
    paths = []
    for seed in (0, 1, 2):
        paths += [write(tmp_path, "base", seed, "forget", target=0.95), write(tmp_path, "base", seed, "retain", ppl=100)]
        paths += [write(tmp_path, "good", seed, "forget", target=0.05), write(tmp_path, "good", seed, "retain", ppl=101)]
        paths += [write(tmp_path, "bad", seed, "forget", target=0.9), write(tmp_path, "bad", seed, "retain", ppl=300)]
        paths += [write(tmp_path, "broken", seed, "forget", target=0.05),
                  write(tmp_path, "broken", seed, "retain", failures={"ppl": "no reference token could be scored"})]
    return Results(paths)


def test_decisions_follow_the_gates(grid):
    rows, decisions = decide(grid, ["base", "good", "bad", "broken"], GATES, [0, 1, 2], CFG)
    assert decisions["good"]["decision"] == "PROCEED" and decisions["good"]["failing"] == []
    assert decisions["bad"]["decision"] == "STOP" and set(decisions["bad"]["failing"]) == {"forget_rate", "retain_ppl"}
    assert "base" not in decisions
    by = {(r["arm"], r["gate"]): r for r in rows}
    assert by[("good", "forget_rate")]["p_adjusted"] < 0.05 and by[("good", "forget_rate")]["ci_high"] < 0


def test_missing_metric_fails_its_gate_with_the_reason(grid):
    rows, decisions = decide(grid, ["base", "broken"], GATES, [0, 1, 2], CFG)
    r = next(r for r in rows if r["gate"] == "retain_ppl")
    assert r["passed"] is False and r["p_adjusted"] is None
    assert "no reference token could be scored" in r["reason"]
    assert decisions["broken"]["failing"] == ["retain_ppl"]
    # a seed without any metrics.json fails too
    rows, _ = decide(grid, ["base", "good"], GATES, [0, 1, 2, 3], CFG)
    assert all(not r["passed"] and "seeds [3]" in r["reason"] for r in rows)


def test_intervals_cover_the_estimate(grid):
    rows = intervals(grid, ["base", "good"], ["forget", "retain"], [0, 1, 2], CFG)
    for r in rows:
        assert r["ci_low"] <= r["estimate"] <= r["ci_high"]
        assert r["n_boot"] == 500 and r["rng_seed"] == 0


def test_neighbour_gates_expand():
    g = expand_gates([{"name": "leak", "metric": "target_rate", "set": "neighbours", "direction": "<=",
                       "relative": "delta", "threshold": 0.1}], ["ur", "pa"])
    assert [x["name"] for x in g] == ["leak[ur]", "leak[pa]"] and [x["set"] for x in g] == ["ur", "pa"]
