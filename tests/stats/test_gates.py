"""Gates and decisions from per-prompt values (issue: statistics and gates)."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, planned_jobs, reduced_config, smk
from mmie import config as mcfg
from mmie.errors import ConfigError
from mmie.stats.gates import RATIO_METRICS, Results, decide, expand_gates, intervals
from mmie.stats.inference import lower_bound, paired_margin, upper_bound

CFG = {"n_boot": 500, "rng_seed": 0, "level": 0.95, "alpha": 0.05, "correction": "holm"}
GATES = [{"name": "forget_rate", "metric": "target_rate", "set": "forget", "direction": "<=", "relative": "ratio",
          "threshold": 0.5},
         {"name": "retain_ppl", "metric": "ppl", "set": "retain", "direction": "<=", "relative": "ratio", "threshold": 1.1}]
ALL3 = {a: [0, 1, 2] for a in ("base", "good", "bad", "broken")}


def record(arm, seed, set_name, target=None, ppl=None, failures=None, n=40):
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
    return {"arm": arm, "seed": seed, "set": set_name, "metrics": metrics, "per_prompt": per,
            "failures": failures or {}}


def write(tmp_path, arm, seed, set_name, **kw):
    path = tmp_path / f"{arm}-{seed}-{set_name}.json"
    path.write_text(json.dumps(record(arm, seed, set_name, **kw)))
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
    rows, decisions = decide(grid, ["base", "good", "bad", "broken"], GATES, ALL3, CFG)
    assert decisions["good"]["decision"] == "PROCEED" and decisions["good"]["failing"] == []
    assert decisions["bad"]["decision"] == "STOP" and set(decisions["bad"]["failing"]) == {"forget_rate", "retain_ppl"}
    assert "base" not in decisions
    by = {(r["arm"], r["gate"]): r for r in rows}
    good = by[("good", "forget_rate")]
    assert good["p_value"] <= 0.05 and good["ci_high"] < 0 and np.isfinite(good["ci_low"])
    assert good["verdict"] == "pass" and good["ci_level"] == pytest.approx(0.9)
    bad = by[("bad", "retain_ppl")]
    # the arm's perplexity is 3x base's: the whole 90 % interval of value − threshold lies above 0
    assert bad["verdict"] == "shown" and bad["ci_low"] > 0 and bad["reason"].startswith("harm shown")
    assert decisions["bad"]["verdicts"] == {"forget_rate": "shown", "retain_ppl": "shown"}


def test_missing_metric_fails_its_gate_with_the_reason(grid):
    rows, decisions = decide(grid, ["base", "broken"], GATES, ALL3, CFG)
    r = next(r for r in rows if r["gate"] == "retain_ppl")
    assert r["passed"] is False and r["p_adjusted"] is None and r["verdict"] == "missing"
    assert "no reference token could be scored" in r["reason"]
    assert decisions["broken"]["failing"] == ["retain_ppl"]
    # a seed without any metrics.json fails too
    rows, _ = decide(grid, ["base", "good"], GATES, {"base": [0], "good": [0, 1, 2, 3]}, CFG)
    assert all(not r["passed"] and "seeds [3]" in r["reason"] for r in rows)


def test_intervals_record_seeds_and_cover_the_estimate(grid):
    rows = intervals(grid, ["base", "good"], ["forget", "retain"], {"base": [0], "good": [0, 1, 2]}, CFG,
                     seeded={"base": False, "good": True})
    for r in rows:
        assert r["ci_low"] <= r["estimate"] <= r["ci_high"]
        assert r["n_boot"] == 500 and r["rng_seed"] == 0
    assert {(r["arm"], r["n_seeds"], r["seeded"]) for r in rows} == {("base", 1, False), ("good", 3, True)}
    # a seed-independent arm is one run: its estimate is seed 0's value, not a mean over copies
    base = next(r for r in rows if r["arm"] == "base" and r["metric"] == "target_rate")
    assert base["estimate"] == pytest.approx(grid.by[("base", "forget")][0]["metrics"]["target_rate"])


def test_neighbour_gates_expand_and_never_vanish():
    g = expand_gates([{"name": "leak", "metric": "target_rate", "set": "neighbours", "direction": "<=",
                       "relative": "delta", "threshold": 0.1}], ["ur", "pa"])
    assert [x["name"] for x in g] == ["leak[ur]", "leak[pa]"] and [x["set"] for x in g] == ["ur", "pa"]
    # without neighbour languages the gate stays (and then fails as "not evaluated")
    leak = {"name": "leak", "metric": "target_rate", "set": "neighbours", "direction": "<=", "relative": "delta",
            "threshold": 0.1}
    assert expand_gates([leak], []) == [leak]


# ----------------------------------------------------------------------------- the grid of seeds
@pytest.mark.parametrize("spec,sampling,seeded", [
    ({"method": "base"}, False, False),
    ({"method": "prompt", "instruction": "x"}, False, False),
    ({"method": "sae_gate"}, False, False),
    ({"method": "dim"}, False, False),
    ({"method": "script_scrub"}, False, False),
    ({"method": "lora"}, False, True),
    ({"method": "reft"}, False, True),
    ({"method": "random_gate"}, False, True),
    ({"method": "sae_gate", "on": "lora"}, False, True),
    ({"method": "base"}, True, True),          # sampled decoding: every arm depends on the seed
    ({"method": "dim"}, True, True),
])
def test_which_arms_are_seeded(spec, sampling, seeded):
    config = {"seeds": [5, 1, 2], "arms": {"x": spec}, "generation": {"do_sample": sampling}}
    assert mcfg.is_seeded(config, "x") is seeded
    assert mcfg.arm_seeds(config, "x") == ([5, 1, 2] if seeded else [5])


def test_workflow_evaluates_seed_independent_arms_once(tmp_path):
    """snakemake -n with 3 seeds: base and prompt are evaluated for the first seed only, lora for all."""
    reduced_config(tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    cfg["seeds"] = [0, 1, 2]
    cfg["arms"] = {k: v for k, v in cfg["arms"].items() if k in ("base", "prompt", "lora")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    jobs = planned_jobs(smk(tmp_path, "-n"))
    assert jobs["evaluate"] == 1 + 1 + 3 and jobs["train"] == 3


# ----------------------------------------------------------------------------- no gate disappears
def test_gate_on_a_set_the_run_does_not_evaluate_is_a_failing_row(grid):
    gates = GATES + [{"name": "mixed_es", "metric": "es", "set": "mixed", "direction": "<=", "relative": "ratio",
                      "threshold": 0.7}]
    rows, decisions = decide(grid, ["base", "good"], gates, ALL3, CFG, sets=["forget", "retain"],
                             set_reasons={"mixed": "data.mixed is not set"})
    r = next(r for r in rows if r["gate"] == "mixed_es")
    assert r["passed"] is False and r["reason"].startswith("not evaluated") and "data.mixed is not set" in r["reason"]
    assert decisions["good"] == {**decisions["good"], "decision": "STOP", "failing": ["mixed_es"]}


def test_stats_step_writes_a_row_for_every_configured_gate(tmp_path, demo_config):
    """The pipeline's stats step on a run without mixed prompts and without neighbours: the default mixed
    and neighbour gates follow the configured sets — rows "not configured", left out of the decision;
    a gate the config writes itself on an unconfigured set is a failing row "not evaluated". None is dropped."""
    from mmie.jobs.report import stats

    config = copy.deepcopy(demo_config)
    config["arms"] = {"base": {"method": "base"}, "prompt": {"method": "prompt", "instruction": "x"}}
    config["data"].update(mixed=None, neighbours={})
    config["languages"]["neighbours"] = {}
    config["stats"]["n_boot"] = 200
    config["gates"] = config["gates"] + [{"name": "my_mixed_rate", "metric": "target_rate", "set": "mixed",
                                          "direction": "<=", "relative": "ratio", "threshold": 0.5}]
    paths = [write(tmp_path, arm, 0, s, target=t, ppl=100) for arm, t in (("base", 0.9), ("prompt", 0.1))
             for s in ("forget", "retain")]
    out = {k: str(tmp_path / f"{k}.out") for k in ("iv", "head", "gates", "dec", "page", "tex")}
    stats(config, paths, out["iv"], out["head"], out["gates"], out["dec"], out["page"], out["tex"])
    gates = pd.read_csv(out["gates"])
    assert list(gates.gate) == [g["name"] for g in config["gates"]]
    not_conf = gates[gates.verdict == "not_configured"]
    assert set(not_conf.gate) == {"mixed_es", "neighbour_own_language", "neighbour_leakage", "neighbour_ppl"}
    assert not_conf.passed.isna().all()
    assert "languages.neighbours is empty" in not_conf.set_index("gate").reason["neighbour_leakage"]
    not_eval = gates[gates.reason.fillna("").str.startswith("not evaluated")]
    assert list(not_eval.gate) == ["my_mixed_rate"] and not not_eval.passed.any()
    assert set(gates.columns) >= {"n_seeds", "seeded", "ci_level", "gate_alpha", "base_n_seeds", "verdict",
                                  "reference", "floor"}
    schema = yaml.safe_load((ROOT / "config" / "results.schema.yaml").read_text())["x-csv-columns"]
    for name, key in (("gates", "summary/gates.csv"), ("iv", "summary/intervals.csv")):
        header = list(pd.read_csv(out[name]).columns)
        assert header[:len(schema[key])] == schema[key], name
    iv = pd.read_csv(out["iv"])
    assert set(zip(iv.arm, iv.n_seeds, iv.seeded, strict=True)) == {("base", 1, False), ("prompt", 1, False)}
    decisions = json.loads((tmp_path / "dec.out").read_text())
    failing = decisions["prompt"]["failing"]
    assert decisions["prompt"]["decision"] == "STOP" and "my_mixed_rate" in failing
    assert not set(failing) & set(not_conf.gate)
    page = (tmp_path / "page.out").read_text()
    assert "not evaluated" in page and "| prompt | mixed_es | — | — | base | — | — | — | — | not configured: data.mixed is not set" in page


def test_default_gates_follow_the_configured_sets(demo_config):
    config = copy.deepcopy(demo_config)
    assert mcfg.gates_not_configured(config) == {}       # the demo configures every set its default gates use
    config["data"].update(mixed=None, adversarial=None)
    assert set(mcfg.gates_not_configured(config)) == {"mixed_es", "adversarial_target_rate"}
    config["gates"] = [{**g, "name": "my_" + g["name"]} for g in config["gates"]]   # written by the config
    assert mcfg.gates_not_configured(config) == {}


@pytest.mark.parametrize("gate,needle", [
    ({"set": "mixd"}, "unknown set 'mixd'"),
    ({"metric": "ess"}, "unknown metric 'ess'"),
    ({"metric": "own_language_rate", "set": "forget"}, "only computed on neighbour sets"),
    ({"metric": "lang_share_xx"}, "unknown metric 'lang_share_xx'"),
])
def test_unknown_set_or_metric_is_a_config_error(demo_config, gate, needle):
    config = copy.deepcopy(demo_config)
    config["gates"] = [*config["gates"], {"name": "g", "metric": "es", "set": "forget", "direction": "<=",
                                         "relative": "ratio", "threshold": 0.5, **gate}]
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        mcfg.check_gates(config)
    config["gates"] = config["gates"][:-1] + [{**config["gates"][-1], "set": "forget", "metric": "lang_share_ur"}]
    mcfg.check_gates(config)   # a known metric on a known set is fine


def test_unknown_gate_set_stops_the_dry_run(tmp_path):
    reduced_config(tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    cfg["gates"] = [{"name": "typo", "metric": "es", "set": "forgett", "direction": "<=", "relative": "ratio",
                     "threshold": 0.5}]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = smk(tmp_path, "-n", check=False)
    assert res.returncode != 0 and "unknown set 'forgett'" in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- one decision rule
MEANS = ["es", "target_rate", "es_romanized", "target_rate_romanized", "own_language_rate", "empty_share"]


def _mean_records(arm, values_by_seed, set_name="forget", metric="es"):
    key = RATIO_METRICS[metric][0]
    return [{"arm": arm, "seed": s, "set": set_name, "metrics": {metric: float(np.mean(v))},
             "failures": {}, "per_prompt": {"id": [f"p{i:03d}" for i in range(len(v))], key: list(map(float, v))}}
            for s, v in values_by_seed.items()]


def test_old_rule_and_old_interval_disagree_new_rule_and_interval_agree():
    """A gate whose one-sided p is just under alpha: the old rule (p < alpha) passed it while the old
    reported two-sided 95 % interval of the margin still reached above 0. The reported interval is now
    the two-sided 1 − 2·alpha interval, whose upper end is the one-sided test: they cannot disagree."""
    rng = np.random.default_rng(11)
    base = {0: 1.0 + rng.normal(0, 0.3, 60)}
    for shift in np.linspace(0.02, 0.2, 60):     # find a case in the disagreement zone
        arm = {0: 0.5 * base[0] - shift + rng.normal(0, 0.25, 60)}
        res = Results.from_records(_mean_records("base", base) + _mean_records("arm", arm))
        sa, _ = res.sample("arm", "forget", "es", [0])
        sb, _ = res.sample("base", "forget", "es", [0])
        old = paired_margin(sa, sb, relative="ratio", factor=0.5, n_boot=2000, seed=0)
        if old["p_below"] < 0.05 and old["ci_high"] > 0:
            break
    else:
        pytest.fail("no disagreement case found")
    gate = {"name": "g", "metric": "es", "set": "forget", "direction": "<=", "relative": "ratio", "threshold": 0.5}
    rows, _ = decide(res, ["base", "arm"], [gate], {"base": [0], "arm": [0]}, {**CFG, "n_boot": 2000})
    r = rows[0]
    assert r["passed"] == (r["ci_high"] < 0) and r["ci_level"] == pytest.approx(0.90)
    assert r["passed"] == (r["p_value"] <= 0.05)


@pytest.mark.parametrize("correction", ["holm", "bh", "bonferroni"])
def test_passed_is_exactly_the_interval_clearing_on_random_cases(correction):
    rng = np.random.default_rng({"holm": 1, "bh": 2, "bonferroni": 3}[correction])
    n_rows = n_pass = 0
    for case in range(60):
        m = int(rng.integers(1, 7))
        base = {0: 1.0 + rng.normal(0, 0.3, 40)}
        recs = _mean_records("base", base)
        gates = []
        for j in range(m):
            direction = ["<=", ">=", "within"][int(rng.integers(0, 3))]
            metric = MEANS[j]
            shift = rng.normal(0, 0.12)
            arm = {s: base[0] + shift + rng.normal(0, 0.2, 40) + rng.normal(0, 0.05) for s in (0, 1, 2)}
            recs += _mean_records("arm", arm, metric=metric) + _mean_records("base", base, metric=metric)
            gates.append({"name": f"g{j}", "metric": metric, "set": "forget", "direction": direction,
                          "relative": "delta", "threshold": 0.1 if direction == "within" else 0.0})
        res = Results.from_records(_merge(recs))
        rows, decisions = decide(res, ["base", "arm"], gates, {"base": [0], "arm": [0, 1, 2]},
                                 {**CFG, "n_boot": 400, "rng_seed": case, "correction": correction})
        for r in rows:
            if r["direction"] == "<=":
                clears = r["ci_high"] < 0
            elif r["direction"] == ">=":
                clears = r["ci_low"] > 0
            else:
                clears = -r["factor"] < r["ci_low"] and r["ci_high"] < r["factor"]
            assert r["passed"] == clears, r
            # intersection–union test: each gate at alpha, whatever the (reported) correction
            assert r["passed"] == (r["p_value"] <= CFG["alpha"] + 1e-12), r
            assert r["p_adjusted"] >= r["p_value"] - 1e-12
            n_rows += 1
            n_pass += r["passed"]
        assert (decisions["arm"]["decision"] == "PROCEED") == all(r["passed"] for r in rows)
    assert 0 < n_pass < n_rows     # the batch holds both outcomes


def _merge(recs):
    """Records of one (arm, seed, set) merged (several metrics per metrics.json)."""
    out = {}
    for r in recs:
        key = (r["arm"], r["seed"], r["set"])
        if key not in out:
            out[key] = copy.deepcopy(r)
        else:
            out[key]["metrics"].update(r["metrics"])
            out[key]["per_prompt"].update(r["per_prompt"])
    return list(out.values())


# ----------------------------------------------------------------------------- NaN never passes
def test_nan_never_passes():
    g = np.full(100, np.nan)
    assert upper_bound(g, 0.05) == np.inf and lower_bound(g, 0.05) == -np.inf
    half = np.where(np.arange(100) % 2 == 0, np.nan, -1.0)   # half the replicates NaN: counted against
    assert upper_bound(half, 0.05) == np.inf
    base = {0: np.full(40, 0.9)}
    arm = {0: np.where(np.arange(40) == 3, np.nan, 0.1)}
    gates = [{"name": n, "metric": "es", "set": "forget", "direction": d, "relative": "ratio", "threshold": 0.5}
             for n, d in (("le", "<="), ("ge", ">="))]
    rows, decisions = decide(Results.from_records(_mean_records("base", base) + _mean_records("arm", arm)),
                             ["base", "arm"], gates, {"base": [0], "arm": [0]}, CFG)
    assert not any(r["passed"] for r in rows) and decisions["arm"]["decision"] == "STOP"
    assert all("non-finite" in r["reason"] for r in rows)


def test_replicates_without_a_denominator_count_against_the_gate():
    """Only 1 of 40 arm outputs has letters: about (39/40)^40 ≈ 36 % of the bootstrap replicates have
    no letter at all, so the arm's target-script share is 0/0 there. Those replicates cannot support
    the gate: it fails, instead of passing on the finite rest (what c83e9ca did by dropping them)."""
    n = 40
    ids = [f"p{i:02d}" for i in range(n)]

    def rec(arm, target_letters, letters):
        share = sum(target_letters) / sum(letters)
        return {"arm": arm, "seed": 0, "set": "forget", "metrics": {"target_script_share": share}, "failures": {},
                "per_prompt": {"id": ids, "target_letters": target_letters, "letters": letters}}

    base = rec("base", [20] * n, [20] * n)
    arm = rec("arm", [0] * n, [0] * (n - 1) + [30])
    gate = {"name": "script", "metric": "target_script_share", "set": "forget", "direction": "<=",
            "relative": "ratio", "threshold": 0.5}
    rows, decisions = decide(Results.from_records([base, arm]), ["base", "arm"], [gate], {"base": [0], "arm": [0]},
                             {**CFG, "n_boot": 2000})
    assert rows[0]["value"] == 0.0 and rows[0]["p_value"] > 0.3
    assert not rows[0]["passed"] and decisions["arm"]["decision"] == "STOP"
