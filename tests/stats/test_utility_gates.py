"""Gates and intervals on lm-eval's utility scores (sets ``utility:<task>``): the per-document values of
each utility.json resampled by the same crossed bootstrap as mmie's own sets (mmie/report/utility.py
``records``, mmie/stats/gates.py). Known answers: an arm with base's answers passes ``acc >= 0.95 ×
base``, an arm that answers nothing right fails with harm shown, a failed utility job and a metric
that is not a mean over documents fail as missing, each with its reason."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
from test_gates import write

from mmie import config as mcfg
from mmie.errors import ConfigError
from mmie.report.utility import records
from mmie.stats.gates import Results, decide, intervals

CFG = {"n_boot": 1000, "rng_seed": 0, "level": 0.95, "alpha": 0.05, "correction": "holm"}
GATE = {"name": "arc_kept", "metric": "acc", "set": "utility:t1", "direction": ">=", "relative": "ratio",
        "threshold": 0.95}


def utility_json(tmp_path, arm, seed, acc1, acc2=None, bleu=None, name=None):
    """A utility.json as the utility job writes it: tasks t1 (acc per document ``acc1``), t2 and their
    group grp; lm-eval's reported values are the documents' means (bleu: a corpus score, not a mean)."""
    acc2 = acc1[:5] if acc2 is None else acc2
    t1 = {"acc": float(np.mean(acc1)), "acc_stderr": 0.05, "exact_match,strict-match": 0.5,
          "exact_match,strict-match_stderr": 0.1}
    if bleu is not None:
        t1 |= {"bleu": bleu, "bleu_stderr": 1.0}
    both = [*acc1, *acc2]
    task = {"n": 0, "num_fewshot": 0, "version": 1.0, "higher_is_better": {"acc": True}}
    res = {"arm": arm, "seed": seed, "method": arm,
           "tasks": {"t1": {**task, "metrics": t1},
                     "t2": {**task, "metrics": {"acc": float(np.mean(acc2)), "acc_stderr": 0.1}},
                     "grp": {**task, "metrics": {"acc": float(np.mean(both)), "acc_stderr": 0.04}}},
           "items": {"t1": {"doc_id": list(range(len(acc1))), "acc": list(acc1),
                            "bleu": [float(i) for i in range(len(acc1))]},
                     "t2": {"doc_id": list(range(len(acc2))), "acc": list(acc2)}},
           "groups": {"grp": ["t1", "t2"]}, "lm_eval": {"limit": None}}
    path = tmp_path / f"{name or arm}-{seed}-utility.json"
    path.write_text(json.dumps(res))
    return str(path)


BASE = [1] * 30 + [0] * 10       # base answers 30 of 40 documents right


def test_records_hold_lm_evals_means_and_the_documents_they_average(tmp_path):
    recs = {r["set"]: r for r in records(utility_json(tmp_path, "base", 0, BASE, bleu=31.4))}
    assert sorted(recs) == ["utility:grp", "utility:t1", "utility:t2"]
    t1 = recs["utility:t1"]
    assert t1["metrics"] == {"acc": 0.75} and t1["per_prompt"]["acc"] == BASE
    assert t1["per_prompt"]["id"] == [f"t1/{i}" for i in range(40)] and t1["arm"] == "base" and t1["seed"] == 0
    # a corpus-level score (bleu) and a filtered variant are recorded failures with their reason, not values
    assert "not the mean of its 40 per-document values" in t1["failures"]["bleu"]
    assert "unfiltered metrics only" in t1["failures"]["exact_match,strict-match"]
    # a group pools its tasks' documents: lm-eval's size-weighted aggregate
    grp = recs["utility:grp"]
    assert grp["per_prompt"]["id"] == [*(f"t1/{i}" for i in range(40)), *(f"t2/{i}" for i in range(5))]
    assert grp["metrics"]["acc"] == pytest.approx(35 / 45) and grp["failures"] == {}


def test_a_document_without_a_value_is_a_failure(tmp_path):
    path = utility_json(tmp_path, "base", 0, BASE)
    res = json.loads(open(path).read())
    res["items"]["t2"]["acc"][0] = None
    open(path, "w").write(json.dumps(res))
    recs = {r["set"]: r for r in records(path)}
    assert "1 of 5 documents have no finite acc" in recs["utility:t2"]["failures"]["acc"]
    assert "acc" not in recs["utility:t2"]["metrics"] and "acc" in recs["utility:grp"]["failures"]


def decide_on(tmp_path, arms: dict, gates=(GATE,), seeds=(0, 1)):
    res = Results([])
    for arm, acc in {"base": BASE, **arms}.items():
        for s in seeds:
            for rec in records(utility_json(tmp_path, arm, s, acc)):
                res.add(rec)
    grid = {a: list(seeds) for a in ["base", *arms]}
    sets = ["utility:t1", "utility:t2", "utility:grp"]
    return decide(res, ["base", *arms], list(gates), grid, CFG, sets=sets)


def test_known_answers_of_an_accuracy_gate(tmp_path):
    rng = np.random.default_rng(0)
    noisy = [a if rng.random() > 0.5 else 1 - a for a in BASE]       # half the answers replaced by coin flips
    rows, decisions = decide_on(tmp_path, {"same": BASE, "nothing": [0] * 40, "noise": noisy})
    by = {r["arm"]: r for r in rows}
    # base's own answers: 0.75 >= 0.95 x 0.75 on every resample of the same documents
    assert by["same"]["passed"] and decisions["same"]["decision"] == "PROCEED"
    assert by["same"]["value"] == 0.75 and by["same"]["threshold"] == pytest.approx(0.7125)
    # no right answer: harm shown
    assert by["nothing"]["verdict"] == "shown" and decisions["nothing"]["decision"] == "STOP"
    assert "acc on utility:t1: value 0" in by["nothing"]["reason"]
    assert not by["noise"]["passed"] and by["noise"]["value"] == pytest.approx(np.mean(noisy))
    assert by["same"]["n_prompts"] == 40


def test_a_metric_that_is_no_mean_and_a_failed_job_fail_as_missing(tmp_path):
    bleu_gate = {**GATE, "name": "bleu", "metric": "bleu", "relative": "delta", "threshold": -1.0}
    res = Results([])
    for s in (0, 1):
        for rec in records(utility_json(tmp_path, "base", s, BASE, bleu=3.0)):
            res.add(rec)
        for rec in records(utility_json(tmp_path, "lora", s, BASE, bleu=3.0)):
            res.add(rec)
    rows, decisions = decide(res, ["base", "lora"], [bleu_gate], {"base": [0, 1], "lora": [0, 1]}, CFG,
                             sets=["utility:t1"])
    assert rows[0]["verdict"] == "missing" and "not the mean of its 40 per-document values" in rows[0]["reason"]
    # seed 1's utility job failed: the gate names that failure
    res.by[("lora", "utility:t1")].pop(1)
    res.unavailable[("lora", "utility:t1", 1)] = "lora seed 1: its utility job failed (utility: CUDA out of memory)"
    rows, decisions = decide(res, ["base", "lora"], [GATE], {"base": [0, 1], "lora": [0, 1]}, CFG,
                             sets=["utility:t1"])
    assert rows[0]["verdict"] == "missing" and "its utility job failed (utility: CUDA out of memory)" in rows[0]["reason"]
    assert decisions["lora"]["decision"] == "STOP"


def test_intervals_of_utility_sets_match_an_independent_bootstrap_of_the_documents(tmp_path):
    res = Results([])
    for rec in records(utility_json(tmp_path, "base", 0, BASE)):
        res.add(rec)
    iv = intervals(res, ["base"], ["utility:t1"], {"base": [0]}, CFG)
    (row,) = [r for r in iv if r["metric"] == "acc"]
    assert row["estimate"] == 0.75
    # one seed: a percentile bootstrap of the 40 documents' mean (same level), within Monte Carlo error
    rng = np.random.default_rng(1)
    reps = np.asarray(BASE)[rng.integers(0, 40, size=(20000, 40))].mean(axis=1)
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert row["ci_low"] == pytest.approx(lo, abs=0.03) and row["ci_high"] == pytest.approx(hi, abs=0.03)


def test_utility_gates_are_checked_against_utility_tasks(demo_config):
    config = copy.deepcopy(demo_config)
    config["utility"] = {**config["utility"], "tasks": ["arc_easy"]}
    config["gates"] = [*config["gates"], {**GATE, "set": "utility:arc_easy"}]
    mcfg.check_gates(config)
    config["gates"][-1] = {**GATE, "set": "utility:mmlu"}
    with pytest.raises(ConfigError, match=r"lm-eval task 'mmlu', which utility.tasks does not run.*utility:arc_easy"):
        mcfg.check_gates(config)
    config["gates"][-1] = {**GATE, "set": "utility:arc_easy", "metric": "acc,none"}
    with pytest.raises(ConfigError, match="not an lm-eval metric name"):
        mcfg.check_gates(config)


def test_the_stats_step_gates_utility_and_names_a_failed_job(tmp_path, demo_config):
    """The pipeline's stats step with utility results: rows of intervals.csv and gates.csv for the
    utility set; a failed utility job of one arm is that arm's failing gate, with the job's error."""
    from mmie.jobs.report import stats

    config = copy.deepcopy(demo_config)
    config["arms"] = {"base": {"method": "base"}, "prompt": {"method": "prompt", "instruction": "x"},
                      "lb": {"method": "logit_bias", "bias": -50.0}}
    config["stats"]["n_boot"] = 200
    config["utility"] = {**config["utility"], "tasks": ["t1"]}
    config["gates"] = [GATE]
    paths = [write(tmp_path, arm, 0, s, target=t, ppl=100) for arm, t in (("base", 0.9), ("prompt", 0.1), ("lb", 0.1))
             for s in ("forget", "retain")]
    folder = tmp_path / "results"
    utility = []
    for arm in ("base", "prompt", "lb"):
        (folder / arm / "seed0").mkdir(parents=True)
        utility.append(str(folder / arm / "seed0" / "utility.json"))
    for arm, path in zip(("base", "prompt"), utility, strict=False):
        open(path, "w").write(open(utility_json(tmp_path, arm, 0, BASE if arm == "base" else [0] * 40)).read())
    open(utility[2], "w").write(json.dumps({"mmie_failed": {"rule": "utility", "wildcards": {"arm": "lb", "seed": "0"},
                                                          "error": "RuntimeError: out of memory", "log": "x.log"}}))
    out = {k: str(tmp_path / f"{k}.out") for k in ("iv", "head", "gates", "dec", "page", "tex")}
    stats(config, paths, out["iv"], out["head"], out["gates"], out["dec"], out["page"], out["tex"], utility=utility)
    gates = pd.read_csv(out["gates"]).set_index("arm")
    assert gates.loc["prompt", "set"] == "utility:t1" and gates.loc["prompt", "verdict"] == "shown"
    assert gates.loc["lb", "verdict"] == "missing" and "its utility job failed (utility: RuntimeError: out of memory" \
        in gates.loc["lb", "reason"]
    iv = pd.read_csv(out["iv"])
    assert set(iv[iv.set == "utility:t1"].arm) == {"base", "prompt"}
