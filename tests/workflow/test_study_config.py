"""A study config replaces the demo (config.yaml is read only when snakemake gets no --configfile):
the study plans exactly its own arms, sets and data files; the config/ profiles are complete configs."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import DEMO, ROOT, SNAKEMAKE, planned_jobs, write_lines

# The "your own study in five minutes" example of README.md, verbatim.
STUDY_YAML = """\
experiment: my-study
seeds: [0]
languages:
  target: {code: hi, name: Hindi, script: devanagari}
  retain: {code: en, name: English, script: latin}
data:
  forget: data/my-study/forget.jsonl
  retain: data/my-study/retain.jsonl
model:
  source: hub
  id: Qwen/Qwen2.5-1.5B-Instruct
  revision: 989aa7980e4cf806f80c7fef2b1adb7bc71aa306
arms:
  base: {method: base}
  prompt: {method: prompt, instruction: "Respond only in English."}
"""
STUDY_SETS = ["forget", "retain", "romanized"]   # no neighbours, mixed, adversarial, translations, yes_no


def demo_lines(name: str, n: int, start: int = 0) -> list[dict]:
    lines = (DEMO / name).read_text(encoding="utf-8").splitlines()[start:start + n]
    return [json.loads(line) for line in lines]


def like_the_repository(workdir: Path) -> None:
    """A working directory like a clone's: the demo's config.yaml and data/demo/ are there (the demo
    config leaked into a study only where Snakemake found config.yaml)."""
    (workdir / "config.yaml").write_text((ROOT / "config.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "data" / "demo").symlink_to(DEMO, target_is_directory=True)


def dry_run(workdir: Path, *configfiles: Path, extra: tuple = ()) -> subprocess.CompletedProcess:
    like_the_repository(workdir)
    cmd = SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2"]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    res = subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=300, cwd=workdir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def planned_inputs(res: subprocess.CompletedProcess) -> list[str]:
    """Every input file of every planned job, from the dry run's "input:" lines."""
    return [f for line in (res.stdout + res.stderr).splitlines() if line.strip().startswith("input:")
            for f in (x.strip() for x in line.split(":", 1)[1].split(",")) if f]


def reads_demo_data(path: str) -> bool:
    return "data/demo/" in path.replace("\\", "/") or path.startswith(str(DEMO))


def minimal_study(workdir: Path) -> Path:
    write_lines(workdir / "data" / "my-study" / "forget.jsonl", demo_lines("forget_hi.jsonl", 40))
    write_lines(workdir / "data" / "my-study" / "retain.jsonl", demo_lines("retain_en.jsonl", 40))
    path = workdir / "my.yaml"
    path.write_text(STUDY_YAML, encoding="utf-8")
    return path


def test_minimal_study_plans_only_its_arms_sets_and_files(tmp_path):
    res = dry_run(tmp_path, minimal_study(tmp_path))
    jobs = planned_jobs(res)
    # two arms x one seed, each scored (one job per arm and seed) on the three sets the study defines;
    # nothing of the demo's grid
    assert jobs["evaluate"] == 2 and jobs["score"] == 2, jobs
    assert not {"build_demo_model", "train", "select_layers", "sweep_gate"} & set(jobs), jobs
    inputs = planned_inputs(res)
    assert "data/my-study/forget.jsonl" in inputs and "data/my-study/retain.jsonl" in inputs
    assert not [f for f in inputs if reads_demo_data(f)]
    planned_sets = set(re.findall(r"results/my-study/\w+/seed0/([\w-]+)/metrics\.json", res.stdout))
    assert planned_sets == set(STUDY_SETS)


def test_the_documented_study_is_the_tested_one():
    """The README shows this test's config verbatim, and one real line per data role (each is the
    first line of the demo's file for that role, in the documented order)."""
    doc = (ROOT / "README.md").read_text(encoding="utf-8")
    assert STUDY_YAML in doc
    block = doc.split("```jsonl\n", 1)[1].split("```", 1)[0].splitlines()
    files = ["forget_hi.jsonl", "retain_en.jsonl", "forget_romanized.jsonl", "mixed.jsonl", "adversarial.jsonl",
             "neighbours/ur.jsonl", "lid_check.jsonl", "yes_no.jsonl", "translations.jsonl", "gibberish_hi.jsonl"]
    assert [json.loads(line) for line in block] == [demo_lines(f, 1)[0] for f in files]


def test_demo_is_used_only_without_a_configfile():
    """No --configfile: the demo, config.yaml, with its twelve arms (the oracle among them, built by the workflow)."""
    res = subprocess.run(SNAKEMAKE + ["-n", "--forceall", "--cores", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    from mmie.config import arm_seeds, load

    demo = load(ROOT / "config.yaml")
    assert len(demo["arms"]) == 12
    jobs = planned_jobs(res)
    assert jobs["evaluate"] == sum(len(arm_seeds(demo, arm)) for arm in demo["arms"])
    assert jobs["build_oracle_model"] == 1 and arm_seeds(demo, "oracle") == [0]


def bengali_study(workdir: Path, *, run: bool = False) -> Path:
    """Forget Bengali, keep English, with Hindi, Urdu and Punjabi as neighbours: its own data files."""
    d = workdir / "data" / "bn-study"
    n = 60 if run else 30
    write_lines(d / "forget_bn.jsonl", demo_lines("neighbours/bn.jsonl", 2 * n))
    write_lines(d / "retain_en.jsonl", demo_lines("retain_en.jsonl", 2 * n))
    for code, name in (("hi", "forget_hi.jsonl"), ("ur", "neighbours/ur.jsonl"), ("pa", "neighbours/pa.jsonl")):
        write_lines(d / f"{code}.jsonl", demo_lines(name, n))
    cfg = {
        "experiment": "bn-study",
        "seeds": [0, 1] if run else [0],
        "languages": {"target": {"code": "bn", "name": "Bengali", "script": "bengali"},
                      "retain": {"code": "en", "name": "English", "script": "latin"},
                      "neighbours": {"hi": {"name": "Hindi", "script": "devanagari"},
                                     "ur": {"name": "Urdu", "script": "arabic"},
                                     "pa": {"name": "Punjabi", "script": "gurmukhi"}}},
        "data": {"forget": "data/bn-study/forget_bn.jsonl", "retain": "data/bn-study/retain_en.jsonl",
                 "neighbours": {c: f"data/bn-study/{c}.jsonl" for c in ("hi", "ur", "pa")}},
        "model": {"source": "demo"},
        # a from-scratch model of the demo's architecture, cut to what a shared 2-core machine trains in about a
        # minute; too short to speak the languages, so its fluency check is off (the plumbing is what is tested)
        "demo_model": {"vocab_size": 600, "hidden_size": 64, "layers": 2, "intermediate_size": 128, "max_steps": 40,
                       "eval_every": 20, "check": {"enabled": False}},
        "generation": {"max_new_tokens": 12, "min_new_tokens": 4, "repetition_penalty": 1.2},
        "eval": {"max_prompts": 6, "mia_max_items": 8},
        "arms": {"base": {"method": "base"},
                 "prompt": {"method": "prompt", "instruction": "Respond only in English."},
                 "lora": {"method": "lora", "train": {"max_steps": 4, "eval_every": 2, "heldout_items": 8}}},
        "stats": {"n_boot": 200},
        "resources": {"allow_cpu": True},
    }
    if run:   # the plan keeps the default attacks; the run is about the study's own data and an external arm
        cfg["robustness"] = {"attacks": []}
    path = workdir / "bn.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


BN_SETS = ["forget", "retain", "romanized", "hi", "ur", "pa"]   # no data.translations: no comprehension set


def test_bengali_target_study_with_hindi_as_a_neighbour_plans(tmp_path):
    res = dry_run(tmp_path, bengali_study(tmp_path))
    jobs = planned_jobs(res)
    # base and prompt are seed-independent (evaluated once), lora has one seed here
    assert jobs["evaluate"] == 3 and jobs["train"] == 1 and jobs["score"] == 3, jobs
    assert not [f for f in planned_inputs(res) if reads_demo_data(f)]
    assert set(re.findall(r"results/bn-study/base/seed0/([\w-]+)/metrics\.json", res.stdout)) == set(BN_SETS)


def run_study(workdir: Path, config: Path) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile", str(config), "--cores", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=2400, cwd=workdir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


@pytest.mark.slow
def test_bengali_target_study_runs_end_to_end_then_evaluates_an_external_adapter(tmp_path):
    """The Bengali study on the demo-size model (two seeds); then someone else's LoRA (plain peft on
    the same model) is added as an external arm: evaluated once, compared with base in the gates."""
    import csv

    like_the_repository(tmp_path)          # the demo's config.yaml is there, and must not be used
    config = bengali_study(tmp_path, run=True)
    run_study(tmp_path, config)
    out = tmp_path / "results" / "bn-study"
    for arm, seeds in (("base", (0,)), ("prompt", (0,)), ("lora", (0, 1))):   # base, prompt: seed-independent
        assert sorted(p.name for p in (out / arm).iterdir() if p.is_dir()) == [f"seed{k}" for k in seeds]
        for seed in seeds:
            for s in BN_SETS:
                metrics = json.loads((out / arm / f"seed{seed}" / s / "metrics.json").read_text())
                assert metrics["arm"] == arm and metrics["set"] == s
    base = json.loads((out / "base" / "seed0" / "forget" / "metrics.json").read_text())
    assert "target_rate" in base["metrics"], base["failures"]
    manifest = json.loads((out / "base" / "seed0" / "evaluate.json").read_text())
    assert manifest["provenance"]["device"]["device"] == "cpu"      # the device the job used
    assert "data/demo" not in (out / "data" / "prepare_report.json").read_text()
    gates = list(csv.DictReader((out / "summary" / "gates.csv").open()))
    assert {"hi", "ur", "pa"} <= {g["set"] for g in gates}

    # someone else's unlearning: a LoRA made with peft alone on the study's model
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "elsewhere" / "adapter"))
    cfg = yaml.safe_load(config.read_text())
    cfg["arms"]["ext"] = {"method": "external", "adapter": "elsewhere/adapter"}
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    run_study(tmp_path, config)
    assert sorted(p.name for p in (out / "ext").iterdir() if p.is_dir()) == ["seed0"]     # seedless
    for s in BN_SETS:
        assert json.loads((out / "ext" / "seed0" / s / "metrics.json").read_text())["arm"] == "ext"
    details = json.loads((out / "ext" / "seed0" / "evaluate.json").read_text())["arm_details"]
    assert details["method"] == "external" and details["adapter"] == "elsewhere/adapter"
    ext_gates = [g for g in csv.DictReader((out / "summary" / "gates.csv").open()) if g["arm"] == "ext"]
    # every gate compared the arm with base; the one-minute model writes only noise, so fluency_ratio (which
    # compares outputs in a language with human text of it) is a recorded failure, by design
    unmeasured = [g for g in ext_gates if "missing metric" in g["reason"]]
    assert ext_gates and all(g["metric"] == "fluency_ratio" and "no output is in a language" in g["reason"]
                             for g in unmeasured), unmeasured
    assert any(g["value"] not in ("", None) for g in ext_gates)
    assert "ext" in json.loads((out / "summary" / "decisions.json").read_text())


def test_profiles_are_complete_configs():
    """Every config/ profile validates on its own (no key inherited from the demo)."""
    from mmie.config import check, load

    for name in ("qwen2.5-1.5b-a100.yaml", "gemma3-270m.yaml", "gemma3-270m-cpu.yaml"):
        cfg = load(ROOT / "config" / name)
        check(cfg, ROOT)
    cpu = load(ROOT / "config" / "gemma3-270m-cpu.yaml")
    assert set(cpu["arms"]) == {"base", "prompt", "lora", "reft"} and cpu["resources"]["allow_cpu"] is True


def test_gemma_cpu_profile_plans_its_reduced_grid_alone(tmp_path):
    res = subprocess.run(SNAKEMAKE + ["-n", "--forceall", "--cores", "2", "--configfile", str(ROOT / "config" / "gemma3-270m-cpu.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res)
    assert jobs["evaluate"] == 4 and jobs["train"] == 2, jobs   # lora and reft, one seed
    assert jobs["tune"] == 2, jobs   # both choose lr (and reft a retain scale) on dev data first


# ----------------------------------------------------------------------------- the default workflow profile
def test_default_profile_is_picked_up_and_changes_nothing_the_demo_computes(tmp_path):
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert profile == {"keep-going": True, "rerun-incomplete": True, "printshellcmds": True, "show-failed-logs": True,
                       "latency-wait": 60}
    runs = {}
    for name, extra in (("with", []), ("without", ["--workflow-profile", "none"])):
        res = subprocess.run(SNAKEMAKE + ["-n", "--forceall", "--cores", "2", *extra], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = res
    assert "workflow specific profile profiles/default" in runs["with"].stderr
    assert "profiles/default" not in runs["without"].stderr
    assert planned_jobs(runs["with"]) == planned_jobs(runs["without"])
