"""Per-study tuning on dev data (issue 24, point 4): the selection rule on planted grid results, the
config checks, a tiny-model tune job (its file, and that it reads no test or holdout text), a train job
that takes the tuned values, and the workflow's plan with and without a grid."""
import copy
import csv
import json
import subprocess

import pytest
import torch
import yaml

from conftest import ROOT, SNAKEMAKE, planned_jobs, reduced_config, tiny_train_files
from mmie.arms import tuning
from mmie.errors import ConfigError


def point(lr, scale, increase, ratio=1.1, status="ok"):
    return {"lr": lr, "retain_scale": scale, "status": status, "retain_ppl_ratio": ratio,
            "forget_nll_increase": increase}


# ----------------------------------------------------------------------------- the selection rule
def test_the_largest_forget_increase_within_the_retain_budget_wins():
    points = [point(1e-4, 1.0, 0.2), point(3e-4, 1.0, 0.9),
              point(1e-3, 1.0, 5.0, ratio=1.3),                        # more forgetting, but over budget
              point(3e-3, 1.0, None, ratio=None, status="NoStateWithinBudget")]
    assert tuning.choose(points, 1.2, "lora") == points[1]
    assert [tuning.within_budget(p, 1.2) for p in points] == [True, True, False, False]
    # a NaN ratio or increase is never within budget
    assert not tuning.within_budget(point(1e-4, 1.0, float("nan")), 1.2)
    assert not tuning.within_budget(point(1e-4, 1.0, 0.5, ratio=float("nan")), 1.2)


def test_ties_go_to_the_smaller_lr_then_the_larger_retain_scale():
    points = [point(1e-3, 1.0, 0.5), point(3e-4, 1.0, 0.5 - 1e-9), point(3e-4, 2.0, 0.5), point(1e-4, 1.0, 0.4)]
    assert tuning.choose(points, 1.2, "lora") == points[2]
    assert tuning.choose(list(reversed(points)), 1.2, "lora") == points[2]   # not the order given


def test_no_point_within_budget_fails_naming_the_keys():
    points = [point(1e-3, 1.0, 2.0, ratio=1.5), point(3e-3, 1.0, None, ratio=None, status="NoStateWithinBudget")]
    with pytest.raises(tuning.NoGridPointWithinBudget) as err:
        tuning.choose(points, 1.2, "reft")
    msg = str(err.value)
    assert "arms.reft.train.tune.lr" in msg and "arms.reft.train.max_retain_ppl_ratio" in msg
    assert "lr 0.001 x retain_scale 1: ok (ratio 1.5)" in msg and "NoStateWithinBudget" in msg


def test_grid_and_what_a_point_changes(demo_config):
    from mmie.arms import resolve_spec

    lora = resolve_spec({**demo_config["arms"]["lora"], "train": {**demo_config["arms"]["lora"]["train"],
                                                                   "tune": {"lr": [3e-3, 1e-3], "retain_scale": [2, 1]}}})
    assert tuning.grid(lora) == [{"lr": 1e-3, "retain_scale": 1.0}, {"lr": 1e-3, "retain_scale": 2.0},
                                 {"lr": 3e-3, "retain_scale": 1.0}, {"lr": 3e-3, "retain_scale": 2.0}]
    spec, changed = tuning.apply(lora, 1e-3, 2.0)
    t = lora["train"]
    assert changed == {"train.lr": 1e-3, "train.retain_kl": 2 * t["retain_kl"], "train.retain_nll": 2 * t["retain_nll"]}
    assert spec["train"]["retain_kl"] == 2 * t["retain_kl"] and "tune" not in spec["train"] and "tune" in t
    rmu = resolve_spec({**demo_config["arms"]["rmu"], "train": {**demo_config["arms"]["rmu"]["train"],
                                                                 "tune": {"retain_scale": [0.5, 1]}}})
    assert [p["lr"] for p in tuning.grid(rmu)] == [rmu["train"]["lr"]] * 2    # lr left out: the configured one
    spec, changed = tuning.apply(rmu, rmu["train"]["lr"], 0.5)
    assert changed == {"train.lr": rmu["train"]["lr"], "retain_weight": 0.5 * rmu["retain_weight"]}
    assert spec["train"]["retain_kl"] == rmu["train"]["retain_kl"]     # rmu has no such term: untouched


def test_config_checks_name_the_key(demo_config):
    from mmie.config import check_arm, load, tuned_arms

    cfg = copy.deepcopy(demo_config)
    cfg["arms"]["prompt"]["train"] = {"tune": {"lr": [1e-3, 2e-3]}}
    with pytest.raises(ConfigError, match=r"arms\.prompt\.train\.tune: only a trained arm"):
        check_arm(cfg, "prompt", cfg["arms"]["prompt"], ROOT)
    for tune, msg in (({"lr": [1e-3]}, "the grid has one point"), ({"lr": [1e-3, 1e-3]}, r"tune\.lr: values repeat"),
                      ({}, "give lr and/or retain_scale")):
        spec = {**cfg["arms"]["lora"], "train": {**cfg["arms"]["lora"]["train"], "tune": tune}}
        with pytest.raises(ConfigError, match=rf"arms\.lora\.train\.{msg}" if "tune" in msg else msg):
            check_arm(cfg, "lora", spec, ROOT)
    with pytest.raises(Exception, match="lrs"):   # the schema: no other keys
        load(ROOT / "config.yaml", {"arms": {"lora": {"train": {"tune": {"lrs": [1e-3]}}}}})
    with pytest.raises(Exception, match="0"):     # positive values
        load(ROOT / "config.yaml", {"arms": {"lora": {"train": {"tune": {"lr": [0, 1e-3]}}}}})
    tuned = load(ROOT / "config.yaml", {"arms": {"reft": {"train": {"tune": {"lr": [1e-3, 2e-3]}}}}})
    assert tuned_arms(tuned) == ["reft"] and tuned_arms(demo_config) == []


# ----------------------------------------------------------------------------- the job, tiny model
def test_tune_job_writes_its_choice_from_dev_only_and_train_uses_it(tiny_lm, demo_texts, demo_config, tmp_path,
                                                                    monkeypatch):
    from mmie import io
    from mmie.jobs import train as train_job

    data = tiny_train_files(tmp_path, tiny_lm, demo_texts, {"train": slice(0, 40), "dev": slice(200, 208),
                                                             "test": slice(300, 308), "holdout": slice(300, 308)})
    fit = [str(data / role / f"{part}.jsonl") for role in ("forget", "retain") for part in ("train", "dev")]
    config = copy.deepcopy(demo_config)
    config["model"].update(source="local", path=str(tmp_path / "model"), device="cpu")
    train = {**config["arms"]["lora"]["train"], "lr": 1e-3, "max_steps": 4, "eval_every": 2, "batch_size": 4,
             "max_length": 32, "heldout_items": 8, "max_retain_ppl_ratio": 50.0, "retain_nll": 1.0,
             "tune": {"lr": [1e-4, 3e-2], "retain_scale": [1.0, 3.0]}}
    config["arms"] = {"lora": {"method": "lora", "rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"], "train": train}}

    read = []
    real = io.read_jsonl
    monkeypatch.setattr(io, "read_jsonl", lambda path, *a, **k: read.append(str(path)) or real(path, *a, **k))
    out = tmp_path / "results" / "tune" / "lora.json"
    kept = tmp_path / "results" / "tune" / "lora.chosen"
    train_job.tune(config, "lora", 0, None, fit, str(out), None, str(kept))
    assert sorted(p.name for p in out.parent.iterdir()) == ["lora.chosen", "lora.json"]   # the other points' runs gone
    assert read and not [p for p in read if p.endswith(("test.jsonl", "holdout.jsonl"))], read
    rec = json.loads(out.read_text())
    assert rec["grid"] == {"lr": [1e-4, 3e-2], "retain_scale": [1.0, 3.0], "configured": train["tune"]}
    assert rec["seed"] == 0 and rec["rule"] == tuning.RULE and rec["max_retain_ppl_ratio"] == 50.0
    assert rec["retain_scale_multiplies"] == ["train.retain_kl", "train.retain_nll"]
    assert rec["dev_texts"] == {"forget": 8, "retain": 8}
    assert [(p["lr"], p["retain_scale"]) for p in rec["points"]] == [(1e-4, 1.0), (1e-4, 3.0), (3e-2, 1.0), (3e-2, 3.0)]
    for p in rec["points"]:
        assert p["status"] == "ok" and p["within_budget"] and p["settings"]["train.lr"] == p["lr"]
        assert p["settings"]["train.retain_kl"] == pytest.approx(train["retain_kl"] * p["retain_scale"])
        assert p["forget_nll_increase"] == pytest.approx(p["forget_nll"] - p["base_forget_nll"])
    # the points differ (the grid's values reached the loop), and the choice is the rule's
    assert len({round(p["forget_nll_increase"], 6) for p in rec["points"]}) > 1
    chosen = tuning.choose(rec["points"], 50.0, "lora")
    assert {k: rec["chosen"][k] for k in ("lr", "retain_scale")} == {"lr": chosen["lr"],
                                                                      "retain_scale": chosen["retain_scale"]}
    prov = rec["provenance"]
    assert prov["rule"] == "tune" and prov["seed"] == 0
    assert sorted(prov["texts_used"]["groups"]) == ["forget/dev", "forget/train", "retain/dev", "retain/train"]

    # a train job of any seed takes the chosen values, and its manifest says where they came from
    ckpt = tmp_path / "results" / "checkpoints" / "lora" / "seed1"
    train_job.train(config, "lora", 1, None, fit, str(ckpt), None, str(out))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["spec"]["train"]["lr"] == rec["chosen"]["lr"] and "tune" not in manifest["spec"]["train"]
    assert manifest["tuning"]["from"] == str(out) and manifest["tuning"]["tuned_at_seed"] == 0
    assert manifest["tuning"]["overrides"] == rec["chosen"]["settings"]
    assert manifest["tuning"]["configured"]["train.lr"] == 1e-3
    # at the tuning seed, the train job is the chosen grid point's run: the same kept state and dev figures
    ckpt0 = tmp_path / "results" / "checkpoints" / "lora" / "seed0"
    train_job.train(config, "lora", 0, None, fit, str(ckpt0), None, str(out))
    summary = json.loads((ckpt0 / "manifest.json").read_text())["summary"]
    best = next(p for p in rec["points"] if (p["lr"], p["retain_scale"]) == (chosen["lr"], chosen["retain_scale"]))
    log = {int(r["step"]): r for r in csv.DictReader((ckpt0 / "train_log.csv").open())}
    assert summary["kept_step"] == best["kept_step"]
    assert float(log[best["kept_step"]]["forget_nll"]) == pytest.approx(best["forget_nll"], rel=1e-12)
    # ... so the train job at that seed takes the tune job's run instead of training it again: the same
    # weights, log and summary as the retrained checkpoint, and the manifest says where they come from
    reused = tmp_path / "results" / "checkpoints" / "lora" / "seed0-reused"
    train_job.train(config, "lora", 0, None, fit, str(reused), None, str(out), str(kept))
    again = json.loads((reused / "manifest.json").read_text())
    assert again["trained_by"] == {"rule": "tune", "from": str(kept)}
    timing = ("tokens_per_second", "train_seconds")   # of the tune job's run
    assert {k: v for k, v in again["summary"].items() if k not in timing} == {
        k: v for k, v in summary.items() if k not in timing} and again["spec"] == manifest["spec"]
    assert (reused / "train_log.csv").read_text() == (ckpt0 / "train_log.csv").read_text()
    from safetensors.torch import load_file
    a, b = load_file(reused / "adapter_model.safetensors"), load_file(ckpt0 / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (reused / train_job.RUN_FILE).exists()
    assert "trained by the `tune` job as its chosen grid point's run" in (reused / "README.md").read_text()
    with pytest.raises(ValueError, match="not of lora at seed 1"):
        train_job.train(config, "lora", 1, None, fit, str(tmp_path / "wrong-seed"), None, str(out), str(kept))
    # a tune file of another grid is refused
    stale = {**config, "arms": {"lora": {**config["arms"]["lora"],
                                         "train": {**train, "tune": {"lr": [1e-4, 1e-3]}}}}}
    with pytest.raises(ValueError, match="another grid"):
        train_job.train(stale, "lora", 0, None, fit, str(tmp_path / "other"), None, str(out))


def test_tune_keeps_the_chosen_run_of_every_trained_method(tiny_lm, demo_texts, demo_config, tmp_path):
    """ReFT's save (unlike peft's) writes into an existing folder: the tune job's kept run of each
    method is a loadable checkpoint folder, and the train job at the tuning seed makes it the checkpoint."""
    from mmie.jobs import train as train_job

    data = tiny_train_files(tmp_path, tiny_lm, demo_texts, {"train": slice(0, 16), "dev": slice(200, 204),
                                                             "test": slice(300, 304), "holdout": slice(300, 304)})
    fit = [str(data / role / f"{part}.jsonl") for role in ("forget", "retain") for part in ("train", "dev")]
    config = copy.deepcopy(demo_config)
    config["model"].update(source="local", path=str(tmp_path / "model"), device="cpu")
    config["layers"]["force_layers"] = [1]
    train = {**config["arms"]["lora"]["train"], "max_steps": 2, "eval_every": 1, "batch_size": 4, "max_length": 32,
             "heldout_items": 4, "max_retain_ppl_ratio": 50.0, "tune": {"lr": [1e-4, 1e-3]}}
    config["arms"] = {"reft": {"method": "reft", "rank": 2, "train": train}}
    out, kept = tmp_path / "tune" / "reft.json", tmp_path / "tune" / "reft.chosen"
    train_job.tune(config, "reft", 0, None, fit, str(out), None, str(kept))
    assert (kept / train_job.RUN_FILE).is_file() and len(list(kept.iterdir())) > 1
    ckpt = tmp_path / "checkpoints" / "reft" / "seed0"
    train_job.train(config, "reft", 0, None, fit, str(ckpt), None, str(out), str(kept))
    assert json.loads((ckpt / "manifest.json").read_text())["trained_by"]["rule"] == "tune"


# ----------------------------------------------------------------------------- the workflow's plan
def dry_run(workdir, tune: dict | None, seeds=(0, 1), target="results/t/checkpoints/lora/seed1"):
    workdir.mkdir(exist_ok=True)
    path = reduced_config(workdir)
    cfg = yaml.safe_load(path.read_text())
    cfg["seeds"] = list(seeds)
    if tune:
        cfg["arms"]["lora"]["train"]["tune"] = tune
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = subprocess.run(SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile",
                                      str(path), "--cores", "2", target],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_a_tuned_arm_plans_one_tune_job_before_its_train_jobs(tmp_path):
    res = dry_run(tmp_path / "tuned", {"lr": [1e-3, 3e-3], "retain_scale": [1, 2]})
    jobs = planned_jobs(res)
    assert jobs["tune"] == 1 and jobs["train"] == 1
    text = res.stdout + res.stderr
    assert text.index("rule tune:") < text.index("rule train:")
    train_job = text.split("rule train:")[1].split("\n\n")[0]
    assert "input:" in train_job and "results/t/tune/lora.json" in train_job.split("output:")[0]
    assert "lora.chosen" not in train_job.split("output:")[0]
    # at the tuning seed the train job takes the tune job's run of the chosen point
    res = dry_run(tmp_path / "tuned", {"lr": [1e-3, 3e-3], "retain_scale": [1, 2]},
                  target="results/t/checkpoints/lora/seed0")
    train_job = (res.stdout + res.stderr).split("rule train:")[1].split("\n\n")[0]
    assert "results/t/tune/lora.chosen" in train_job.split("output:")[0]
    res = dry_run(tmp_path / "plain", None)
    assert "tune" not in planned_jobs(res) and "rule tune:" not in res.stdout + res.stderr


# ----------------------------------------------------------------------------- the results page
def test_results_page_reports_the_grid_and_the_choice(demo_config):
    import pandas as pd

    from mmie.report import results_page

    points = [{**point(1e-4, 1.0, 0.1, 1.01), "kept_step": 20, "within_budget": True},
              {**point(1e-3, 1.0, 0.7, 1.15), "kept_step": 15, "within_budget": True},
              {**point(3e-3, 1.0, None, None, "NoStateWithinBudget"), "within_budget": False}]
    record = {"arm": "lora", "seed": 0, "rule": tuning.RULE, "points": points,
              "chosen": {"lr": 1e-3, "retain_scale": 1.0}, "retain_scale_multiplies": ["train.retain_kl", "train.retain_nll"]}
    iv = pd.DataFrame(columns=["arm", "set", "metric", "estimate", "ci_low", "ci_high"])
    gates = pd.DataFrame(columns=["arm", "gate", "p_value"])
    page = results_page.page(iv, gates, {}, ["base"], ["forget"], demo_config, None, tuning=[record])
    assert "## Choices made on dev data" in page and tuning.RULE in page
    assert "| lora | 0.001 | 1 | 15 | 1.150 | +0.700 | **chosen** |" in page
    assert "| lora | 0.003 | 1 | — | — | — | over budget (NoStateWithinBudget) |" in page
    assert "lora: train.retain_kl, train.retain_nll" in page
    assert "Choices made on dev data" not in results_page.page(iv, gates, {}, ["base"], ["forget"], demo_config)
