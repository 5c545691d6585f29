"""The workflow end to end on a reduced demo config (foundation issue, items 1, 9-11, 13).

Runs from a directory whose path contains a space and an apostrophe (reliability row 11)."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import EXP, ROOT, SETS, SNAKEMAKE, planned_jobs, reduced_config, smk

ARMS = list(yaml.safe_load((ROOT / "config.yaml").read_text())["arms"])

pytestmark = pytest.mark.slow
def metrics(run_dir: Path, arm: str, seed: int, set_name: str) -> dict:
    return json.loads((run_dir / "results" / EXP / arm / f"seed{seed}" / set_name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def lid(run_dir):
    from mmie.config import load
    from mmie.lang.lid import load_lid

    cfg = load(run_dir / "config.yaml")
    return load_lid(cfg["lid"], cfg["languages"], run_dir / "results" / EXP / "lid" / "romanized_detector.json")


def recount(run_dir: Path, lid, arm: str, set_name: str, label: str | None = None) -> tuple[float, list[str]]:
    """The share of the outputs in the set's generations.jsonl that the LID calls the target (or
    ``label``), recounted here from the stored generations, and their ids in order."""
    path = run_dir / "results" / EXP / arm / "seed0" / set_name / "generations.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    labels = [lid.identify(r["output"])[0] for r in rows]
    hits = [lid.is_target(lab) if label is None else lab == label for lab in labels]
    return sum(hits) / len(hits), [r["id"] for r in rows]


def test_lint_is_clean():
    res = subprocess.run(SNAKEMAKE + ["--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_one_score_job_per_arm_and_seed_reading_every_sets_judge_scores(tmp_path):
    """Scoring and judging are one job per (arm, seed), not one per set; with the judge on, the score job
    reads every set's judge.json. A dry run in a fresh directory: seconds."""
    path = reduced_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["seeds"], cfg["judge"] = [0, 1], {"enabled": True}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = smk(tmp_path, "-n")
    jobs = planned_jobs(res)
    from mmie.config import arm_seeds, load

    runs = sum(len(arm_seeds(load(path), arm)) for arm in cfg["arms"])   # seed-independent arms run once
    assert jobs["score"] == runs and jobs["judge"] == runs   # one judge job per (arm, seed) too
    out = res.stdout + res.stderr
    block = out[out.index("rule score:"):]
    inputs = block[:block.index("\n    output:")]
    judged = re.findall(r"results/t/[^/]+/seed\d/([^/]+)/judge\.json", inputs)
    assert sorted(judged) == sorted(SETS)


def test_every_contract_output_exists_with_provenance(run_dir, lid):
    r = run_dir / "results" / EXP
    for arm in ("base", "prompt", "lora", "reft"):
        for s in SETS:
            m = metrics(run_dir, arm, 0, s)
            rate, ids = recount(run_dir, lid, arm, s)
            assert m["arm"] == arm and m["set"] == s and m["metrics"]["target_rate"] == pytest.approx(rate, abs=1e-12)
            assert m["per_prompt"]["id"] == ids
            prov = m["provenance"]
            for key in ("config_hash", "config_section", "git", "libraries", "device", "runtime", "seed",
                        "data_hashes"):
                assert key in prov, key
            assert prov["runtime"]["dtype"] == "float32" and prov["runtime"]["attn_implementation"]
            assert len(m["per_prompt"]["id"]) == 6
            gens = (r / arm / "seed0" / s / "generations.jsonl").read_text(encoding="utf-8").splitlines()
            assert len(gens) == 6 and {"id", "prompt", "output", "prompt_tokens", "output_tokens"} <= json.loads(gens[0]).keys()
    for f in ("summary/metrics_long.csv", "summary/summary.csv", "summary/summary.md", "data/data_report.json",
              "lid/lid_report.json", "plots/target_rate.png", "plots/lid_confusion.png", "plots/perplexity.png",
              "plots/output_language.png", "plots/demo_training.png"):
        assert (r / f).is_file(), f
    header = (r / "summary" / "metrics_long.csv").read_text().splitlines()[0]
    assert header == "arm,seed,set,metric,value"
    report = json.loads((r / "data" / "data_report.json").read_text())
    assert report["tokens"]["by_file"]["forget/train"]["histogram"]["counts"]
    assert "provenance" in report
    own, _ = recount(run_dir, lid, "base", "ur", label="ur")
    assert metrics(run_dir, "base", 0, "ur")["metrics"]["own_language_rate"] == pytest.approx(own, abs=1e-12)


def test_provenance_records_each_jobs_declared_sections(run_dir):
    """Every job's provenance records as config_section exactly what its rule tracks (``params:
    settings``, from the job's ``@job`` declaration), with the whole config's hash beside it."""
    from mmie import jobs, provenance
    from mmie.config import load

    cfg = load(run_dir / "config.yaml")
    r = run_dir / "results" / EXP
    layer = json.loads((r / "layers" / "selection.json").read_text())["layers"][0]
    files = {("evaluate", "lora"): ("lora/seed0/evaluate.json", ["provenance"]),
             ("evaluate", "sae_gate"): ("sae_gate/seed0/evaluate.json", ["provenance"]),
             ("score", None): ("prompt/seed0/forget/metrics.json", ["provenance"]),
             ("train", "lora"): ("checkpoints/lora/seed0/manifest.json", ["provenance"]),
             ("prepare_data", None): ("data/prepare_report.json", ["provenance"]),
             ("data_report", None): ("data/data_report.json", ["provenance_tokens"]),
             ("fit_lid", None): ("lid/lid_report.json", ["provenance"]),
             ("build_demo_model", None): ("model_report.json", ["provenance"]),
             ("build_oracle_model", None): ("oracle_report.json", ["provenance"]),
             ("select_layers", None): ("layers/selection.json", ["provenance"]),
             ("cache_activations", None): (f"acts/layer{layer}.json", ["provenance"]),
             ("select_features", None): (f"sae/features/layer{layer}.json", ["provenance"]),
             ("train_sae", None): (f"sae/layer{layer}/mmie.json", ["provenance"]),
             ("sweep_gate", "sae_gate"): ("sweep/sae_gate/seed0.json", ["provenance"]),
             ("stats", None): ("summary/decisions.json", ["_provenance"])}
    for (rule, arm), (path, keys) in files.items():
        block = json.loads((r / path).read_text())
        for k in keys:
            block = block[k]
        assert block["rule"] == rule and block["config_hash"] == provenance.config_hash(cfg), path
        assert block["config_section"] == json.loads(jobs.settings_json(cfg, rule, arm)), path


def test_demo_model_really_speaks_the_languages(run_dir):
    rep = json.loads((run_dir / "results" / EXP / "model_report.json").read_text())
    assert rep["problems"] == []
    assert rep["check"]["hi"]["rate"] >= 0.7 and rep["check"]["en"]["rate"] >= 0.7
    assert metrics(run_dir, "base", 0, "forget")["metrics"]["target_rate"] >= 0.5
    assert metrics(run_dir, "base", 0, "retain")["metrics"]["target_rate"] <= 0.2


def test_the_oracle_never_learned_hindi_and_is_evaluated_from_its_own_model(run_dir):
    """The oracle arm: the demo model's recipe and tokenizer without any Hindi, built once and
    evaluated next to the base model (tests/model/test_oracle.py checks its training texts)."""
    r = run_dir / "results" / EXP
    rep = json.loads((r / "oracle_report.json").read_text())
    assert rep["problems"] == [] and rep["check"]["en"]["rate"] >= 0.7
    assert rep["target_continuation_rate"] <= 0.1 and "forget/train" not in rep["training_texts"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (r / "oracle_model" / name).read_bytes() == (r / "model" / name).read_bytes()
    details = json.loads((r / "oracle" / "seed0" / "evaluate.json").read_text())["arm_details"]
    assert details["method"] == "oracle" and details["oracle"] == "built by build_oracle_model"
    assert details["model"]["model"] == f"results/{EXP}/oracle_model"
    assert metrics(run_dir, "oracle", 0, "forget")["metrics"]["target_rate"] <= 0.2
    assert metrics(run_dir, "base", 0, "forget")["metrics"]["target_rate"] >= 0.5


def test_html_report_builds(run_dir):
    smk(run_dir, "--report", "report.html")
    html = (run_dir / "report.html").read_text(errors="replace")
    assert "target_rate.png" in html and len(html) > 10_000


def test_what_a_paper_needs(run_dir):
    """Every figure also as a PDF, the headline table as LaTeX, and each arm's first outputs side by side."""
    r = run_dir / "results" / EXP
    pngs = sorted((r / "plots").glob("*.png"))
    assert pngs and all(p.with_suffix(".pdf").read_bytes().startswith(b"%PDF") for p in pngs)
    tex = (r / "summary" / "headline.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "lora+sae\\_gate" in tex
    page = (r / "summary" / "samples.html").read_text()
    forget = [json.loads(line) for line in (r / "lora" / "seed0" / "forget" / "generations.jsonl").read_text().splitlines()]
    assert all(f"<th>{arm}</th>" in page for arm in ARMS) and "<h2>forget</h2>" in page
    import html

    first = forget[0]["output"]
    assert html.escape(first if first.strip() else "(empty)") in page


def test_rerun_one_target_path_reruns_only_what_it_needs(run_dir):
    target = f"results/{EXP}/prompt/seed0/mixed/metrics.json"
    (run_dir / target).unlink()
    assert planned_jobs(smk(run_dir, "-n", "--", target)) == {"score": 1}
    shutil.rmtree(run_dir / "results" / EXP / "prompt" / "seed0" / "mixed")
    assert planned_jobs(smk(run_dir, "-n", "--", target)) == {"evaluate": 1, "judge": 1, "score": 1}
    smk(run_dir, "--", *[f"results/{EXP}/prompt/seed0/{s}/metrics.json" for s in SETS])  # restore


def test_retraining_one_seed_by_target_path_reruns_exactly_that_seed(run_dir):
    ckpt = run_dir / "results" / EXP / "checkpoints" / "lora" / "seed0"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["arm"] == "lora" and manifest["seed"] == 0 and manifest["summary"]["tokens_per_second"] > 0
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "train_log.csv").is_file()
    target = f"results/{EXP}/lora/seed0/forget/metrics.json"
    expected = {"train": 1, "evaluate": 1, "judge": 1, "score": 1}   # the reduced run has the judge on
    # (a) force the training rule for just this target
    assert planned_jobs(smk(run_dir, "-n", "--forcerun", "train", "--", target)) == expected
    # (b) delete the seed's checkpoint and its results (Snakemake never reruns a job whose outputs
    # exist because an upstream file was deleted, so the results go too)
    shutil.rmtree(ckpt)
    shutil.rmtree(run_dir / "results" / EXP / "lora" / "seed0")
    assert planned_jobs(smk(run_dir, "-n", "--", target)) == expected
    smk(run_dir, "--", *[f"results/{EXP}/lora/seed0/{s}/metrics.json" for s in SETS])  # restore
    assert (ckpt / "manifest.json").is_file()


def test_trained_arms_record_their_checkpoint(run_dir):
    for arm in ("lora", "reft", "rmu"):
        man = json.loads((run_dir / "results" / EXP / arm / "seed0" / "evaluate.json").read_text())
        assert man["checkpoint"]["kept_step"] >= 0 and man["arm_details"]["checkpoint"].endswith(f"{arm}/seed0")
    assert (run_dir / "results" / EXP / "plots" / "training_curves.png").is_file()


def test_exported_checkpoints_carry_a_card_with_what_the_study_measured(run_dir):
    """export/<arm>/seed<k>/: the checkpoint's files as they are, and a model card whose evaluation
    section holds the arm's decision and this seed's own values from the tidy table."""
    import csv

    import yaml

    res = run_dir / "results" / EXP
    smk(run_dir, "--", f"results/{EXP}/export")   # current: an earlier test retrains lora seed0 by its target path
    decisions = json.loads((res / "summary" / "decisions.json").read_text())
    long = list(csv.DictReader((res / "summary" / "metrics_long.csv").open()))
    exported = json.loads((res / "export" / "export.json").read_text())
    assert {(e["arm"], e["seed"]) for e in exported["exported"]} == {(a, 0) for a in ("lora", "reft", "rmu")}
    for arm in ("lora", "reft", "rmu"):
        ckpt, out = res / "checkpoints" / arm / "seed0", res / "export" / arm / "seed0"
        for f in ckpt.iterdir():
            if f.name not in ("README.md", ".snakemake_timestamp"):
                assert (out / f.name).read_bytes() == f.read_bytes(), f
        card = (out / "README.md").read_text()
        assert yaml.safe_load(card.split("---\n")[1])["tags"][-1] == arm
        assert f"decision: **{decisions[arm]['decision']}**" in card
        value = next(float(r["value"]) for r in long if (r["arm"], r["seed"], r["set"], r["metric"]) == (arm, "0", "forget", "target_rate"))
        assert "| `forget:target_rate` |" in card and f"| {value:.4g} |" in card


def test_same_config_and_seed_give_identical_metrics(run_dir):
    """A trained arm evaluated again from its checkpoint gives the same metrics and per-prompt
    values (the reduced run decodes greedily; sampled decoding's seeding is tested in
    tests/model/test_generation.py)."""
    arm = "lora"
    before = {s: metrics(run_dir, arm, 0, s) for s in SETS}
    assert before["retain"]["metrics"]["token_kl"] > 0          # the arm is not the base model
    smk(run_dir, "--forcerun", "evaluate", "--", *[f"results/{EXP}/{arm}/seed0/{s}/metrics.json" for s in SETS])
    for s in SETS:
        after = metrics(run_dir, arm, 0, s)
        assert after["metrics"] == before[s]["metrics"], s
        assert after["per_prompt"] == before[s]["per_prompt"], s


def test_every_output_validates_against_the_results_schema(run_dir):
    import csv

    import jsonschema

    schema = yaml.safe_load((ROOT / "config" / "results.schema.yaml").read_text())
    r = run_dir / "results" / EXP

    def check(instance, name):
        jsonschema.validate(instance, {"$ref": f"#/$defs/{name}", "$defs": schema["$defs"]})

    files = list(r.glob("*/seed*/*/metrics.json"))
    assert len(files) == len(ARMS) * len(SETS)
    for f in files:
        check(json.loads(f.read_text()), "metrics_json")
    check(json.loads((r / "summary" / "decisions.json").read_text()), "decisions_json")
    for f in r.glob("checkpoints/*/seed*/manifest.json"):
        check(json.loads(f.read_text()), "checkpoint_manifest")
    for rel, columns in schema["x-csv-columns"].items():
        with open(r / rel, newline="") as fh:
            header = next(csv.reader(fh))
        assert header[:len(columns)] == columns, rel


def test_statistics_gates_and_results_page(run_dir):
    r = run_dir / "results" / EXP / "summary"
    decisions = json.loads((r / "decisions.json").read_text())
    assert {k for k in decisions if not k.startswith("_")} == set(ARMS) - {"base"}
    assert set(decisions) - set(ARMS) == {"_provenance", "_choices", "_measurable", "_forget_quality"}
    assert decisions["_choices"]["layers"]["layers"] == json.loads((run_dir / "results" / EXP / "layers" /
                                                                    "selection.json").read_text())["layers"]
    page = (r / "results.md").read_text()
    for arm in ("base", "prompt", "lora", "reft"):
        assert f"**{arm}**" in page
    assert "mia_auc" in (r / "intervals.csv").read_text()
    forget = json.loads((run_dir / "results" / EXP / "lora" / "seed0" / "forget" / "metrics.json").read_text())
    assert 0 <= forget["metrics"]["mia_auc"] <= 1 and len(forget["mia"]["id"]) > 0
    retain = json.loads((run_dir / "results" / EXP / "base" / "seed0" / "retain" / "metrics.json").read_text())
    assert retain["metrics"]["token_kl"] == pytest.approx(0.0, abs=1e-6)   # base against itself


def test_every_arm_but_base_has_a_positive_retain_token_kl(run_dir):
    """Token KL is KL(base ‖ arm): zero for base, positive for every arm that changes the model. It
    was 0 for script_scrub when the base pass ran with the arm on (a projection applied twice)."""
    kls = {arm: metrics(run_dir, arm, 0, "retain")["metrics"]["token_kl"] for arm in ARMS}
    print("retain token KL per arm:", kls)
    assert kls.pop("base") == pytest.approx(0.0, abs=1e-6)
    assert all(kl > 1e-4 for kl in kls.values()), kls


# ----------------------------------------------------------------------------- layers and SAEs (issue 4)
def test_layer_selection_artifact_drives_the_sae_jobs_and_reft(run_dir):
    r = run_dir / "results" / EXP
    sel = json.loads((r / "layers" / "selection.json").read_text())
    assert sel["forced"] is False and len(sel["layers"]) == 1
    n_layers = len(sel["candidates"])
    assert len(sel["resamples"]) == 2 and all(len(per) == n_layers for per in sel["resamples"])
    assert sum(sel["votes"].values()) == 2 and "provenance" in sel
    (layer,) = sel["layers"]
    # the DAG followed the choice: one cache, SAE, feature file and quality file, for that layer only
    assert sorted(p.name for p in (r / "sae").glob("layer*")) == [f"layer{layer}"]
    assert (r / "acts" / f"layer{layer}.safetensors").is_file()
    assert sorted(p.name for p in (r / "sae" / "features").iterdir()) == [f"layer{layer}.json"]
    reft = json.loads((r / "checkpoints" / "reft" / "seed0" / "manifest.json").read_text())
    assert reft["layers"] == [layer]
    man = json.loads((r / "sae_gate" / "seed0" / "evaluate.json").read_text())
    assert man["arm_details"]["layers"] == [layer] and man["arm_details"][f"layer{layer}"]["features"]
    assert (r / "plots" / "layer_selection.png").is_file()


def test_sae_checkpoint_loads_with_sae_lens_and_quality_is_reported(run_dir):
    import csv

    from sae_lens import SAE

    r = run_dir / "results" / EXP
    (layer,) = json.loads((r / "layers" / "selection.json").read_text())["layers"]
    sae = SAE.load_from_disk(str(r / "sae" / f"layer{layer}"), device="cpu")
    meta = json.loads((r / "sae" / f"layer{layer}" / "mmie.json").read_text())
    assert sae.cfg.d_in == meta["d_in"] and "provenance" in meta
    q = json.loads((r / "sae" / "quality" / f"layer{layer}.json").read_text())
    assert 0 <= q["fvu"] < 1 and q["l0"] > 0 and 0 <= q["dead_share"] <= 1
    assert q["ce_clean"] <= q["ce_zero"] and q["loss_recovered"] <= 1.0 + 1e-6
    held = meta["data"]["holdout_texts"]  # quality on whole texts the SAE never trained on
    assert all(set(q["loss_recovered_texts"][r]) <= set(held[r]) for r in ("forget", "retain"))
    with open(r / "summary" / "sae_quality.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["layer"]) for row in rows] == [layer]
    for name in ("sae_quality", "dose_response"):
        assert (r / "plots" / f"{name}.png").is_file()


def test_gate_arms_and_dose_response(run_dir, lid):
    r = run_dir / "results" / EXP
    sweep = json.loads((r / "sweep" / "sae_gate" / "seed0.json").read_text())
    rows = {(x["method"], x["alpha"]): x for x in sweep["rows"]}
    assert set(rows) == {(m, a) for m in ("sae_gate", "random_gate") for a in (0.0, 1.0)}
    # alpha = 0 is the base model for both
    assert rows[("sae_gate", 0.0)]["target_rate"] == rows[("random_gate", 0.0)]["target_rate"]
    assert rows[("sae_gate", 0.0)]["retain_ppl"] == pytest.approx(rows[("random_gate", 0.0)]["retain_ppl"])
    layer_key = next(k for k in rows[("sae_gate", 1.0)]["features"])
    chosen = set(rows[("sae_gate", 1.0)]["features"][layer_key])
    assert chosen and not chosen & set(rows[("random_gate", 1.0)]["features"][layer_key])
    control = json.loads((r / "random_gate" / "seed0" / "evaluate.json").read_text())["arm_details"][layer_key]
    assert set(control["features"]) == set(rows[("random_gate", 1.0)]["features"][layer_key])
    assert len(control["control"]["chosen_freq_forget"]) == len(control["control"]["random_freq_forget"]) == len(chosen)
    combined = json.loads((r / "lora+sae_gate" / "seed0" / "evaluate.json").read_text())
    assert combined["arm_details"]["on"] == "lora" and combined["arm_details"]["checkpoint"].endswith("lora/seed0")
    for arm in ("random_gate", "dim", "script_scrub", "reft+sae_gate"):
        rate, ids = recount(run_dir, lid, arm, "forget")
        m = metrics(run_dir, arm, 0, "forget")
        assert m["metrics"]["target_rate"] == pytest.approx(rate, abs=1e-12) and m["per_prompt"]["id"] == ids

