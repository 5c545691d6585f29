"""Utility through lm-evaluation-harness (rules/utility.smk, mmie/jobs/utility.py, mmie/model/harness.py):
lm-eval's tasks on the arm as the evaluation builds it, offline, with lm-eval's standard errors; the
local tasks of tests/fixtures/lm_eval/ on the tiny model. Off by default: nothing is planned."""
import copy
import json

import pytest
import yaml

from conftest import ROOT, planned_jobs, reduced_config, smk
from mmie import io
from mmie.model import harness

TASKS = ROOT / "tests" / "fixtures" / "lm_eval"


@pytest.fixture(scope="module")
def model_dir(tiny_lm, tmp_path_factory):
    model, tok = tiny_lm
    folder = tmp_path_factory.mktemp("utility") / "model"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def config_with(demo_config, **utility):
    cfg = copy.deepcopy(demo_config)
    cfg["arms"] = {"base": {"method": "base"}, "lb": {"method": "logit_bias", "bias": -50.0},
                   "prompt": {"method": "prompt", "instruction": "Respond only in English."}}
    cfg["utility"] = {**cfg["utility"], "include_path": str(TASKS), "bootstrap_iters": 100, **utility}
    return cfg


def test_the_local_tasks_score_offline_with_lm_evals_standard_errors(tiny_lm):
    model, tok = tiny_lm
    result = harness.run(model, tok, ["mmie_tiny_mc", "mmie_tiny_hi"], include_paths=[str(TASKS)], limit=6,
                         bootstrap_iters=100, log_samples=True)
    tasks = harness.summarize(result)
    assert sorted(tasks) == ["mmie_tiny_hi", "mmie_tiny_mc"]
    mc = tasks["mmie_tiny_mc"]
    assert set(mc["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert 0 <= mc["metrics"]["acc"] <= 1 and mc["metrics"]["acc_stderr"] > 0
    assert mc["n"] == 6 and mc["n_total"] == 8 and mc["num_fewshot"] == 0 and mc["version"] == 1.0
    items = harness.per_item(result)["mmie_tiny_mc"]
    assert len(items["doc_id"]) == len(items["acc"]) == 6 and all(len(ll) == 4 for ll in items["loglikelihoods"])
    assert sum(items["acc"]) / 6 == pytest.approx(mc["metrics"]["acc"])


def test_a_groups_documents_pool_to_lm_evals_size_weighted_aggregate(tiny_lm, tmp_path):
    """The statistics' view of a group (mmie.report.utility.records) against lm-eval's own aggregate of
    it: the mean over all its tasks' documents is lm-eval's weight_by_size value (as MMLU's)."""
    from mmie.report.utility import records

    model, tok = tiny_lm
    result = harness.run(model, tok, ["mmie_tiny"], include_paths=[str(TASKS)], bootstrap_iters=100, log_samples=True)
    path = tmp_path / "utility.json"
    path.write_text(json.dumps({"arm": "base", "seed": 0, "tasks": harness.summarize(result),
                                "items": harness.per_item(result), "groups": harness.groups(result)}))
    recs = {r["set"]: r for r in records(str(path))}
    assert harness.groups(result) == {"mmie_tiny": ["mmie_tiny_mc", "mmie_tiny_hi"]}
    group = recs["utility:mmie_tiny"]
    assert group["failures"] == {} and len(group["per_prompt"]["id"]) == 8 + 8
    lm_evals = result["groups"]["mmie_tiny"]["acc,none"]
    assert group["metrics"]["acc"] == pytest.approx(lm_evals, rel=1e-12)
    assert recs["utility:mmie_tiny_mc"]["metrics"]["acc_norm"] == result["results"]["mmie_tiny_mc"]["acc_norm,none"]


def test_the_job_runs_lm_eval_with_the_arm_switched_on(demo_config, model_dir, tmp_path):
    """base and a logit_bias arm (Devanagari logits lowered by 50) on the same tasks: the arm's hook is on
    during lm-eval (every Devanagari answer loses, its log-likelihood falls by at least 50), and the
    outputs carry each metric's lm-eval standard error, the per-document values and provenance."""
    from mmie.jobs import utility

    cfg = config_with(demo_config, tasks=["mmie_tiny_hi", "mmie_tiny_mc"])
    files = sorted(str(p) for p in TASKS.iterdir())
    out = {}
    for arm in ("base", "lb", "prompt"):
        utility.utility(cfg, arm, 0, str(model_dir), str(tmp_path / arm / "utility.json"), task_files=files)
        out[arm] = io.read_json(tmp_path / arm / "utility.json")
    import jsonschema

    schema = yaml.safe_load((ROOT / "config" / "results.schema.yaml").read_text())
    for res in out.values():
        jsonschema.validate(res, {"$ref": "#/$defs/utility_json", "$defs": schema["$defs"]})
    base, lb = out["base"], out["lb"]
    assert lb["method"] == "logit_bias" and lb["arm_details"]["bias"] == -50.0
    for res in out.values():
        for rec in res["tasks"].values():
            assert rec["metrics"]["acc_stderr"] is not None and rec["n"] == 8
        assert res["provenance"]["rule"] == "utility" and res["provenance"]["config_section"]["utility"] == cfg["utility"]
        assert res["lm_eval"]["version"] and res["lm_eval"]["tasks"] == ["mmie_tiny_hi", "mmie_tiny_mc"]
    assert lb["tasks"]["mmie_tiny_hi"]["metrics"]["acc"] == 0.0
    hi_base, hi_lb = base["items"]["mmie_tiny_hi"]["loglikelihoods"], lb["items"]["mmie_tiny_hi"]["loglikelihoods"]
    assert all(a[0] - b[0] >= 50 for a, b in zip(hi_base, hi_lb, strict=True))      # the Devanagari answer
    assert all(abs(a[1] - b[1]) < 1 for a, b in zip(hi_base, hi_lb, strict=True))   # the ASCII distractor barely
    # the prompt arm's instruction is lm-eval's system instruction: another context, other log-likelihoods
    assert out["prompt"]["lm_eval"]["system_instruction"] == "Respond only in English."
    assert out["prompt"]["items"]["mmie_tiny_mc"]["loglikelihoods"] != base["items"]["mmie_tiny_mc"]["loglikelihoods"]
    assert base["lm_eval"]["system_instruction"] is None
    # lm-eval's few-shot and order seeds are its defaults for every arm and seed; torch's is the run's
    assert base["lm_eval"]["seeds"] == {"random_seed": 0, "numpy_seed": 1234, "torch_seed": 0, "fewshot_seed": 1234}

    from mmie.jobs.utility import utility_table

    table = tmp_path / "utility.csv"
    utility_table(cfg, [str(tmp_path / a / "utility.json") for a in ("base", "lb")], str(table))
    import pandas as pd

    df = pd.read_csv(table)
    row = df[(df.arm == "lb") & (df.task == "mmie_tiny_hi") & (df.metric == "acc")].iloc[0]
    assert row.value == 0.0 and row.stderr == 0.0 and row.base_value == base["tasks"]["mmie_tiny_hi"]["metrics"]["acc"]
    assert set(df.metric) == {"acc", "acc_norm"} and len(df) == 2 * 3


def test_offline_switches_the_hugging_face_libraries_off_the_network_and_back(monkeypatch):
    import os

    import datasets.config
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = (huggingface_hub.is_offline_mode(), datasets.config.HF_HUB_OFFLINE)
    with harness.offline():
        assert huggingface_hub.is_offline_mode() and datasets.config.HF_HUB_OFFLINE
        assert datasets.config.HF_DATASETS_OFFLINE and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert (huggingface_hub.is_offline_mode(), datasets.config.HF_HUB_OFFLINE) == before
    assert "HF_HUB_OFFLINE" not in os.environ


def test_a_missing_task_folder_is_a_config_error(demo_config):
    from mmie.config import check
    from mmie.errors import ConfigError

    with pytest.raises(ConfigError, match=r"utility.include_path: folder not found: no/such/tasks"):
        check(config_with(demo_config, include_path="no/such/tasks"), ROOT)
    check(config_with(demo_config, include_path="tests/fixtures/lm_eval"), ROOT)


def test_a_task_that_needs_a_download_fails_naming_it(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "hub.yaml").write_text(yaml.safe_dump({
        "task": "mmie_needs_hub", "dataset_path": "mmie-test-org/no-such-dataset", "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": "{{c}}", "doc_to_target": 0}))
    tm = harness.task_manager([str(folder)])
    with pytest.raises(harness.HarnessError, match=r"'mmie_needs_hub'.*could not be loaded offline.*HF cache"):
        harness.load_tasks(tm, ["mmie_needs_hub"])
    with pytest.raises(harness.HarnessError, match=r"no lm-eval task, group or tag named \['mmie_no_such_task'\]"):
        harness.load_tasks(tm, ["mmie_no_such_task"])
    with pytest.raises(harness.HarnessError, match="not a folder"):
        harness.task_manager([str(folder / "missing")])


def test_the_table_leaves_out_a_failed_job_and_has_no_base_column_without_base(tmp_path):
    from mmie.report.utility import table

    rec = {"metrics": {"acc": 0.5, "acc_stderr": 0.2}, "n": 8, "num_fewshot": 0, "version": 1.0,
           "higher_is_better": {"acc": True}}
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"arm": "lora", "method": "lora", "seed": 1, "tasks": {"t": rec}, "lm_eval": {"limit": 8}}))
    stub = tmp_path / "b.json"
    stub.write_text(json.dumps({"mmie_failed": {"rule": "utility", "wildcards": {"arm": "x", "seed": "0"}}}))
    df = table([str(a), str(stub)], base="base")
    assert len(df) == 1 and df.iloc[0]["arm"] == "lora" and df.iloc[0]["stderr"] == 0.2
    assert df["ratio_to_base"].isna().all()


def test_utility_is_planned_only_when_tasks_are_set(tmp_path):
    """No utility job by default (the demo's plan is unchanged); with tasks, one job per (arm, seed) that
    the evaluation runs (a seed-independent arm at the first seed) and one table, whose inputs include the
    task folder's files."""
    cfg = yaml.safe_load(reduced_config(tmp_path).read_text())
    cfg["seeds"] = [0, 1]
    cfg["arms"] = {k: v for k, v in cfg["arms"].items() if k in ("base", "prompt", "lora")}
    cfg["robustness"] = {"attacks": []}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    jobs = planned_jobs(smk(tmp_path, "-n"))
    assert "utility" not in jobs and "utility_table" not in jobs and jobs["evaluate"] == 4
    cfg["utility"] = {"tasks": ["mmie_tiny_mc"], "include_path": str(TASKS), "limit": 4}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = smk(tmp_path, "-n")
    jobs = planned_jobs(res)
    assert jobs["utility"] == 1 + 1 + 2     # base and prompt at seed 0, lora at both seeds
    assert jobs["utility_table"] == 1
    # the statistics read them (sets utility:<task> of the intervals and gates)
    assert planned_jobs(smk(tmp_path, "-n", "results/t/summary/gates.csv"))["utility"] == 4
    out = res.stdout + res.stderr
    assert "results/t/lora/seed1/utility.json" in out and "results/t/base/seed1/utility.json" not in out
    assert str(TASKS / "tiny_mc.jsonl") in out


def test_the_workflow_runs_utility_jobs_and_the_table(model_dir, tmp_path, monkeypatch):
    """The rule, its script and the table through Snakemake on a local tiny model (no upstream job: base
    and logit_bias need only the model folder); a failed job is recorded and left out of the table, and
    the next call reruns it."""
    import pandas as pd

    cfg = yaml.safe_load(reduced_config(tmp_path).read_text())
    cfg["model"] = {"source": "local", "path": str(model_dir)}
    cfg["arms"] = {"base": {"method": "base"}, "lb": {"method": "logit_bias", "bias": -50.0}}
    cfg["robustness"] = {"attacks": []}
    cfg["utility"] = {"tasks": ["mmie_tiny_hi"], "include_path": str(TASKS), "bootstrap_iters": 100, "limit": 4}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    r = tmp_path / "results" / "t"
    monkeypatch.setenv("MMIE_FAULT", "utility:lb:0")
    smk(tmp_path, "results/t/summary/utility.csv")
    assert pd.read_csv(r / "summary" / "utility.csv").arm.tolist() == ["base"]
    assert (r / "failures" / "utility").is_dir() and "mmie_failed" in io.read_json(r / "lb" / "seed0" / "utility.json")
    monkeypatch.delenv("MMIE_FAULT")
    smk(tmp_path, "results/t/summary/utility.csv")
    df = pd.read_csv(r / "summary" / "utility.csv")
    assert list(zip(df.arm, df.task, df.metric, df.n, strict=True)) == [("base", "mmie_tiny_hi", "acc", 4),
                                                                       ("lb", "mmie_tiny_hi", "acc", 4)]
    assert df[df.arm == "lb"].value.iloc[0] == 0.0 and (r / "logs" / "utility" / "lb" / "seed0.log").is_file()
    assert (r / "benchmarks" / "utility" / "base" / "seed0.tsv").is_file()
    assert io.read_json(r / "lb" / "seed0" / "utility.json")["provenance"]["rule"] == "utility"
