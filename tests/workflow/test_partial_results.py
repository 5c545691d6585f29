"""Partial results are results (mmie/failures.py): one trained arm made to fail (MMIE_FAULT) on a copy
of the reduced run. The run still ends with every summary, the report builds and names the failure,
the arm sitting on it is blocked (not run), every other arm's estimates and gates are identical to the
run without the failure, `make demo`'s check fails loudly; then a plain rerun of the failed target
path reruns only that arm and fills it in, identical to the run that never failed."""
import json
import os
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import EXP, ROOT, SENTINEL_ENV, SNAKEMAKE, planned_jobs, smk

pytestmark = pytest.mark.slow
LOST = {"lora", "lora+sae_gate"}       # lora's own run and the gate that sits on its checkpoint


def table(work, name: str) -> pd.DataFrame:
    return pd.read_csv(work / "results" / EXP / "summary" / name)


def without(df: pd.DataFrame, arms) -> pd.DataFrame:
    return df[~df["arm"].isin(arms)].reset_index(drop=True)


def test_a_failed_arm_costs_only_its_own_tables_and_a_rerun_fills_it_in(run_dir, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(run_dir, work, symlinks=True)
    env = {**os.environ, **SENTINEL_ENV, "MMIE_FAULT": "train:lora:0"}
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile", str(work / "config.yaml"),
                       "--cores", "2"]
    res = subprocess.run(cmd + ["-R", f"results/{EXP}/checkpoints/lora/seed0"], capture_output=True, text=True,
                         timeout=1200, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "1 job(s) FAILED" in out and "train (arm=lora, seed=0)" in out

    r = work / "results" / EXP
    failed = table(work, "failed_jobs.csv")
    assert sorted(failed["arm"]) == sorted(LOST)
    assert set(failed["rule"]) == {"train"} and failed["error"].str.startswith("FaultInjected").all()
    results_md = (r / "summary" / "results.md").read_text(encoding="utf-8")
    assert "## Failed runs" in results_md and "FaultInjected" in results_md
    decisions = json.loads((r / "summary" / "decisions.json").read_text())
    assert {a for a, d in decisions.items() if not a.startswith("_") and d["decision"] == "FAILED"} == LOST
    blocked = json.loads((r / "lora+sae_gate" / "seed0" / "forget" / "metrics.json").read_text())["mmie_failed"]
    assert blocked["rule"] == "score" and blocked["blocked_by"]["rule"] == "train"
    assert "not run: input" in (r / "logs" / "evaluate" / "lora+sae_gate" / "seed0.log").read_text()

    # every other arm: the same estimates, intervals and gate verdicts as the run without the failure
    for name in ("intervals.csv", "gates.csv", "metrics_long.csv"):
        before, after = table(run_dir, name), table(work, name)
        pd.testing.assert_frame_equal(without(after, LOST), without(before, LOST), check_exact=True, obj=name)
        assert not after["arm"].isin(LOST).any(), name

    smk(work, "--report", "report.html")
    assert "failed_jobs.csv" in (work / "report.html").read_text(encoding="utf-8", errors="replace")
    check = subprocess.run(SNAKEMAKE[:1] + ["-m", "mmie.failures", str(r)], capture_output=True, text=True)
    assert check.returncode == 1 and "train (arm=lora, seed=0)" in check.stderr

    # the failed target path reruns exactly that training and what reads it; then everything is whole again
    target = f"results/{EXP}/lora/seed0/forget/metrics.json"
    plan = planned_jobs(smk(work, "-n", target))
    assert plan.get("train") == 1 and plan.get("evaluate") == 1 and plan.get("score") == 1, plan
    smk(work, target)
    smk(work)
    for name in ("intervals.csv", "gates.csv"):
        pd.testing.assert_frame_equal(table(work, name), table(run_dir, name), check_exact=True, obj=name)
    assert table(work, "failed_jobs.csv").empty
    check = subprocess.run(SNAKEMAKE[:1] + ["-m", "mmie.failures", str(r)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    dry = smk(work, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]
