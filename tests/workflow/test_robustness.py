"""The robustness attacks in the reduced run (rules/robustness.smk): every attack on the attacked arm,
base and the oracle, one table with intervals, a section of the results page, a figure; a target
path reruns its (arm, seed)'s attack job, whose attacks each start as in a job of their own; no attack
reads a test text to fit anything; and, on a copy of the run, two planted suppressions (a logit bias
against the target script's tokens, weights untouched; an instruction) read as suppressed under
relearning and in-context examples respectively, while the oracle reads as suppressed under neither."""
import json
import shutil

import pandas as pd
import pytest
import yaml

from conftest import EXP, planned_jobs, smk

pytestmark = pytest.mark.slow
ATTACKED = {"base", "oracle", "lora"}        # reduced config: robustness.arms [lora] + the references
ATTACKS = {"relearn", "quantize", "incontext", "probe"}


def result(work, arm, attack, seed=0):
    return json.loads((work / "results" / EXP / arm / f"seed{seed}" / "robustness" / f"{attack}.json").read_text())


def test_every_attack_ran_on_every_attacked_arm_with_intervals(run_dir):
    r = run_dir / "results" / EXP
    df = pd.read_csv(r / "summary" / "robustness.csv")
    assert set(df["attack"]) == ATTACKS and set(df["arm"]) == ATTACKED
    assert ((df["ci_low"] <= df["estimate"] + 1e-12) & (df["estimate"] <= df["ci_high"] + 1e-12)).all()
    assert df["base"].notna().all() and df["oracle"].notna().all()   # every point has both references
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["robustness"]
    relearn = df[(df["attack"] == "relearn") & (df["metric"] == "target_rate")]
    assert sorted(relearn[relearn["arm"] == "lora"]["strength"].astype(int)) == sorted(cfg["relearn"]["steps"])
    quant = df[(df["attack"] == "quantize") & (df["arm"] == "lora") & (df["metric"] == "ppl")]
    assert list(quant["strength"].astype(str)) == ["full", "8", "4"]
    probe = df[df["attack"] == "probe"]
    assert {"accuracy", "target_recall", "romanized_recall"} == set(probe["metric"])
    readings = pd.read_csv(r / "summary" / "robustness_readings.csv")
    assert set(readings["arm"]) == ATTACKED and set(readings["attack"]) == ATTACKS
    page = (r / "summary" / "results.md").read_text(encoding="utf-8")
    assert "## Removed or hidden? (robustness attacks)" in page
    assert all(line in page for line in readings["reading"])
    assert (r / "plots" / "robustness.png").stat().st_size > 10_000 and (r / "plots" / "robustness.pdf").is_file()


def test_each_attack_records_what_it_read_and_did(run_dir):
    lora = result(run_dir, "lora", "quantize")
    assert lora["details"]["8"]["merged"] is True and lora["details"]["4"]["scheme"]
    assert result(run_dir, "base", "quantize")["details"]["8"]["merged"] is False
    relearn = result(run_dir, "lora", "relearn")
    assert relearn["details"]["split"] == "forget/holdout" and len(relearn["details"]["losses"]) == 2
    for attack in ATTACKS:
        res = result(run_dir, "lora", attack)
        assert res["attack"] == attack and res["arm"] == "lora" and res["method"] == "lora"
        assert res["provenance"]["rule"] == "attack"
        # nothing an attack fits or draws examples from is a test split (the probe scores on test texts only)
        read = [p for p in res["provenance"]["data_hashes"] if "/data/" in p and "eval_sets" not in p]
        fits = [p for p in read if not p.endswith("/test.jsonl")]
        assert all(p.endswith(("/train.jsonl", "/dev.jsonl", "/holdout.jsonl")) for p in fits), read
        if attack != "probe":
            assert not any(p.endswith("/test.jsonl") for p in read), read
    probe = result(run_dir, "lora", "probe")
    assert all(layer["C"] in yaml.safe_load((run_dir / "config.yaml").read_text())["robustness"]["probe"].get(
        "Cs", [0.01, 0.1, 1.0, 10.0]) for layer in probe["details"]["layers"])


def test_a_target_path_reruns_one_attack_job(run_dir):
    """One job runs every attack of an (arm, seed) on one load of the arm; asking for one attack's
    output reruns that job alone, and each attack's points come out as before — also the ones that
    ran after another attack in the same process (each starts from the state the load left)."""
    target = f"results/{EXP}/oracle/seed0/robustness/incontext.json"
    before = {a: result(run_dir, "oracle", a) for a in ATTACKS}
    (run_dir / target).unlink()
    res = smk(run_dir, target)
    assert planned_jobs(res) == {"attack": 1}
    for attack in ATTACKS:       # greedy decoding, same seed: the same answers, the same relearning curve
        assert result(run_dir, "oracle", attack)["points"] == before[attack]["points"], attack


def test_planted_suppressions_read_as_suppressed_and_the_oracle_does_not(run_dir, tmp_path):
    """Two planted suppressions, each flagged by the attack that undoes it, on the demo's measurement
    (48 forget prompts answered with 32 new tokens; the data and both models are rebuilt for it, the
    same models), while the oracle, which never learned Hindi, reads as suppressed under neither.

    - relearn: a logit bias of -4 against every token that writes Devanagari (shared byte pieces
      included), weights untouched, cuts the Hindi rate below half of base's; a few relearning steps
      on forget/holdout texts bring it back, the oracle does not get there within the grid. A
      constant bias does not depend on the context, so in-context examples do not undo it.
    - incontext: an instruction the demo model follows a little ("English only." three times) cuts
      the Hindi rate to about a third of base's; Hindi sentences put between it and the prompt bring
      Hindi back (about 0.69 with four), while the oracle stays at 0 (docs/method.md "Removed or
      hidden?")."""
    work = tmp_path / "copy"
    shutil.copytree(run_dir, work, symlinks=True)
    path = work / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["arms"]["planted"] = {"method": "logit_bias", "bias": -4.0, "bias_shared": True}
    cfg["arms"]["planted_prompt"] = {"method": "prompt", "instruction": "English only. English only. English only."}
    cfg["eval"]["max_prompts"] = 48
    cfg["generation"]["max_new_tokens"] = 32
    cfg["robustness"] = {**cfg["robustness"], "arms": ["planted", "planted_prompt"], "attacks": ["relearn", "incontext"],
                         "prompts": 48, "relearn": {"steps": [0, 5, 10, 25], "texts": 64},
                         "incontext": {"shots": [0, 2, 4]}}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    smk(work, f"results/{EXP}/summary/robustness_readings.csv")
    read = pd.read_csv(work / "results" / EXP / "summary" / "robustness_readings.csv").set_index(["arm", "attack"])
    for arm, attack in (("planted", "relearn"), ("planted_prompt", "incontext")):
        assert bool(read.loc[(arm, attack), "suppressed"]), read.loc[(arm, attack), "reading"]
        assert read.loc[(arm, attack), "reading"].startswith("suppressed: ")
    for arm in ("oracle", "base"):
        for attack in ("relearn", "incontext"):
            assert not bool(read.loc[(arm, attack), "suppressed"]), (arm, attack, read.loc[(arm, attack), "reading"])
    assert result(work, "planted", "relearn")["details"]["steps"] == [0, 5, 10, 25]
    assert [p["strength"] for p in result(work, "planted_prompt", "incontext")["points"]
            if p["metric"] == "target_rate"] == [0, 2, 4]


def test_unattacked_points_equal_the_evaluation(run_dir):
    """An attack's unattacked point is the evaluation's own number, computed again by the attack job:
    the forget target rate at 0 relearning steps, 0 examples and full precision, and the retain
    perplexity at full precision, equal the evaluate/score jobs' on the same prompts."""
    import math

    r = run_dir / "results" / EXP
    for arm in ATTACKED:
        forget = json.loads((r / arm / "seed0" / "forget" / "metrics.json").read_text())
        by_id = dict(zip(forget["per_prompt"]["id"], forget["per_prompt"]["target"], strict=True))
        for attack, strength in (("relearn", 0), ("incontext", 0), ("quantize", "full")):
            (p,) = [p for p in result(run_dir, arm, attack)["points"]
                    if p["strength"] == strength and p["metric"] == "target_rate"]
            assert p["num"] == [float(by_id[i]) for i in p["ids"]], (arm, attack)
        gens = {g["id"]: g for g in map(json.loads, (r / arm / "seed0" / "retain" / "generations.jsonl")
                                        .read_text().splitlines())}
        (ppl,) = [p for p in result(run_dir, arm, "quantize")["points"] if p["strength"] == "full" and p["metric"] == "ppl"]
        want = [(gens[i]["ref_nll"], gens[i]["ref_tokens"]) for i in ppl["ids"]]
        assert [round(n, 6) for n in ppl["num"]] == [round(n, 6) for n, _ in want], arm
        assert ppl["den"] == [float(t) for _, t in want] and math.isfinite(sum(ppl["num"]))
