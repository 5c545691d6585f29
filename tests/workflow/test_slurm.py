"""The grid on a real SLURM cluster through Snakemake's executor plugin and profiles/slurm.

The cluster tests (marker ``slurm``) need the one-node test cluster of tests/slurm/up.sh (root;
`make test-slurm` installs, starts, tests and stops it) and the optional extra requirements-slurm.txt;
without them they are skipped with the reason. With MMIE_REQUIRE_SLURM=1 (set by `make test-slurm`)
a missing cluster is a failure instead. The pin and profile checks run in `make test` too (the dry run
through the profile needs the plugin)."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXP, ROOT, SETS, SNAKEMAKE, planned_jobs, reduced_config, smk

PROFILE = ROOT / "profiles" / "slurm"
SLURM_DIR = Path(os.environ.get("MMIE_SLURM_DIR", "/tmp/mmie-slurm"))
# A smaller grid than the workflow tests, so that it runs on 2 cores within a few minutes: every kind of
# job (data, demo model, training, evaluation, scoring, reports) still runs on SLURM, and the executor
# path is the same for every arm.
ARMS = ("base", "lora")
GPU_MEM, CPU_MEM = 3000, 1500           # fit any CI machine's node (RealMemory = 90 % of its RAM)
POLL = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2", "--latency-wait", "5"]


def local_rules() -> set[str]:
    """The rules the workflow declares in a ``localrules:`` block (run in Snakemake's own process)."""
    out: set[str] = set()
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for block in re.findall(r"^localrules:(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            out |= set(re.findall(r"\w+", block))
    return out


# rules that never become a SLURM job: the target rule and the local (summary) rules
LOCAL_RULES = local_rules()
NO_JOB_RULES = {"all"} | LOCAL_RULES


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


# ----------------------------------------------------------------------------- everywhere
def test_requirements_slurm_pins_the_plugin_and_changes_nothing_installed():
    """requirements-slurm.txt pins the plugin exactly, and every package it shares with
    constraints.txt at the very same version (so installing it cannot move the venv)."""
    def pins(path):
        out = {}
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                name, sep, version = line.partition("==")
                assert sep and version, f"{path.name}: not an exact pin: {line}"
                out[re.sub(r"[-_.]+", "-", name).lower()] = version
        return out

    extra, constraints = pins(ROOT / "requirements-slurm.txt"), pins(ROOT / "constraints.txt")
    assert extra["snakemake-executor-plugin-slurm"] == "2.8.0"
    new = set(extra) - set(constraints)
    assert new == {"snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep"}, new
    assert {k: v for k, v in extra.items() if k in constraints} == {k: constraints[k] for k in extra if k in constraints}


def gpu_rules_in_workflow() -> set[str]:
    """Every rule or checkpoint in rules/*.smk whose resources declare gpu=1; a rule derived with
    ``use rule A as B with:`` that does not set its own resources has A's."""
    out, derived = set(), {}
    for smk_file in (ROOT / "rules").glob("*.smk"):
        text = smk_file.read_text()
        blocks = re.split(r"^\s*(?:rule|checkpoint)\s+(\w+)\s*:", text, flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            body = re.split(r"^use rule ", body, flags=re.M)[0]
            if re.search(r"^\s*gpu\s*=\s*1\s*,?\s*$", body, re.M):
                out.add(name)
        for parent, name, body in re.findall(r"^use rule (\w+) as (\w+) with:\n((?:[ \t]+.*\n|\n)*)", text, re.M):
            derived[name] = (parent, "resources:" in body)
    out |= {name for name, (parent, own) in derived.items() if parent in out and not own}
    return out


def test_profile_gives_every_gpu_rule_a_gpu_model_and_a_runtime():
    prof = profile()
    assert prof["executor"] == "slurm" and prof["jobs"] >= 1 and prof["latency-wait"] >= 5
    assert {"runtime", "mem_mb"} <= set(prof["default-resources"])
    gpu_rules = gpu_rules_in_workflow()
    assert {"evaluate", "train", "build_demo_model"} <= gpu_rules
    per_rule = prof["set-resources"]
    model = per_rule["evaluate"]["gpu_model"]
    missing = sorted(r for r in gpu_rules if per_rule.get(r, {}).get("gpu_model") != model)
    assert not missing, f"GPU rules without gpu_model: {model} in profiles/slurm set-resources: {missing}"
    for name, res in per_rule.items():
        assert "gpu" not in res and "gres" not in res, name     # the rules' own gpu=1 decides
        if res.get("gpu_model"):
            assert name in gpu_rules, f"{name} is no gpu=1 rule but would get a GPU (gpu_model)"
        # wall-clock limits grow with the retry attempt ("minutes * attempt"; memory doubles in the rules)
        runtime = str(res.get("runtime", "1 * attempt"))
        assert runtime.endswith(" * attempt") and int(runtime.split()[0]) > 0, (name, runtime)
    assert prof["retries"] >= 1


def job_resources(output: str) -> dict[str, set[tuple]]:
    """rule -> the set of resolved resources of its jobs, from Snakemake's job printouts."""
    out: dict[str, set[tuple]] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):", line)
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"^\s+resources: (.*)$", line)
        if m and rule:
            res = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
            out.setdefault(rule, set()).add(tuple(sorted((k, res[k]) for k in ("mem_mb", "runtime", "gpu", "gpu_model")
                                                          if k in res)))
            rule = None
    return out


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="the SLURM executor plugin is an optional extra: pip install -r requirements-slurm.txt")
def test_profile_resolves_gpu_requests_memory_and_runtime_per_rule(tmp_path):
    """What Snakemake itself resolves through the profile for the grid of every arm (dry run, in a
    fresh directory)."""
    path = reduced_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["resources"] = {**(cfg.get("resources") or {}), "model_job_mem_mb": 7100, "light_job_mem_mb": 1700}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = subprocess.run(SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile",
                                      str(tmp_path / "config.yaml"), "--profile", str(PROFILE)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    jobs = job_resources(res.stdout + res.stderr)
    model = profile()["set-resources"]["evaluate"]["gpu_model"]
    # memory from the workflow config (resources.model_job_mem_mb / light_job_mem_mb), runtime from the profile
    assert jobs["evaluate"] == {(("gpu", "1"), ("gpu_model", model), ("mem_mb", "7100"), ("runtime", "240"))}
    assert jobs["score"] == {(("mem_mb", "1700"), ("runtime", "30"))}
    assert all(dict(r).get("gpu_model") == model for r in jobs["train"] | jobs["build_demo_model"])
    for rule in set(jobs) - NO_JOB_RULES:
        for r in jobs[rule]:
            r = dict(r)
            assert ("gpu" in r) == ("gpu_model" in r), (rule, r)    # a GPU job asks for the model, no other job does
            assert int(r["runtime"]) > 0 and int(r["mem_mb"]) > 0, (rule, r)


# ----------------------------------------------------------------------------- on the cluster
def _cluster_env() -> dict:
    def unavailable(reason):
        if os.environ.get("MMIE_REQUIRE_SLURM") == "1":
            pytest.fail(f"MMIE_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)

    if shutil.which("sbatch") is None:
        unavailable("sbatch not found: SLURM is not installed (`make test-slurm` installs and starts a test cluster, as root)")
    if os.geteuid() != 0:
        unavailable("the SLURM test cluster (tests/slurm/up.sh) needs root")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        unavailable("the SLURM executor plugin is not installed: pip install -r requirements-slurm.txt")
    if not (SLURM_DIR / "env").is_file():
        unavailable(f"no test cluster in {SLURM_DIR}: start one with tests/slurm/up.sh")
    env = {**os.environ, "SLURM_CONF": str(SLURM_DIR / "etc" / "slurm.conf")}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        unavailable(f"the test cluster in {SLURM_DIR} does not answer (sinfo timed out)")
    if state.returncode != 0 or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        unavailable(f"the test cluster in {SLURM_DIR} has no usable node: {state.stdout.strip()} {state.stderr.strip()}")
    return env


def grid_config(work: Path) -> Path:
    path = reduced_config(work)
    cfg = yaml.safe_load(path.read_text())
    cfg["arms"] = {a: cfg["arms"][a] for a in ARMS}
    cfg["robustness"] = {"attacks": []}     # the attacks are jobs like evaluate's (tests/workflow cover them)
    cfg["resources"] = {**(cfg.get("resources") or {}), "model_job_mem_mb": GPU_MEM, "light_job_mem_mb": CPU_MEM}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def on_slurm(work: Path, env: dict, *args: str, limit: int = 420) -> subprocess.CompletedProcess:
    """Snakemake with the SLURM profile; `timeout -k` because SIGTERM alone leaves it waiting on jobs."""
    cmd = ["timeout", "-k", "15", str(limit), *SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(work / "config.yaml"), "--profile", str(PROFILE), *POLL, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    if res.returncode in (124, 137):
        # a killed Snakemake cancels nothing: cancel this run's jobs (they share the run ID as name)
        for run in set(re.findall(r"SLURM run ID: (\S+)", res.stdout + res.stderr)):
            subprocess.run(["scancel", "--name", run], env=env, timeout=30, check=False)
        pytest.fail(f"snakemake on SLURM timed out after {limit} s:\n{res.stderr[-4000:]}")
    return res


def run_id(res: subprocess.CompletedProcess) -> str:
    ids = re.findall(r"SLURM run ID: (\S+)", res.stdout + res.stderr)
    assert len(ids) == 1, (res.stdout + res.stderr)[-3000:]
    return ids[0]


def sacct(env: dict, run: str) -> list[dict]:
    """The allocations (not steps) SLURM accounted for one Snakemake run (its jobs share one name)."""
    fields = ["JobID", "Comment", "State", "ExitCode", "AllocTRES", "ReqMem", "Timelimit", "Account"]
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1days", "--name", run, "-o", ",".join(fields)],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    return [dict(zip(fields, line.split("|"), strict=True)) for line in res.stdout.splitlines() if line.strip()]


def rule_of(job: dict) -> str:
    m = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", job["Comment"])
    assert m, job
    return m.group(1)


def minutes(timelimit: str) -> int:
    days, _, hms = timelimit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def metrics(work: Path, arm: str, set_name: str) -> dict:
    return json.loads((work / "results" / EXP / arm / "seed0" / set_name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The same reduced grid run locally and on SLURM, each in its own directory, one after the other
    (side by side, two 2-thread torch jobs on 2 cores slow each other down several-fold)."""
    env = _cluster_env()
    base = tmp_path_factory.mktemp("slurm")
    local, cluster = base / "local", base / "on slurm"
    local.mkdir()
    cluster.mkdir()
    grid_config(local)
    grid_config(cluster)
    assert (local / "config.yaml").read_text() == (cluster / "config.yaml").read_text()
    smk(local)
    res = on_slurm(cluster, env, limit=900)
    assert res.returncode == 0, f"snakemake on SLURM failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return {"env": env, "local": local, "cluster": cluster, "res": res, "run": run_id(res)}


@pytest.mark.slurm
def test_grid_on_slurm_gives_the_local_results(grid):
    files = sorted(p.relative_to(grid["cluster"]) for p in (grid["cluster"] / "results" / EXP).glob("*/seed*/*/metrics.json"))
    assert len(files) == len(ARMS) * len(SETS)
    assert files == sorted(p.relative_to(grid["local"]) for p in (grid["local"] / "results" / EXP).glob("*/seed*/*/metrics.json"))
    for arm in ARMS:
        for s in SETS:
            here, there = metrics(grid["cluster"], arm, s), metrics(grid["local"], arm, s)
            assert here["metrics"] and here["metrics"] == there["metrics"], (arm, s)
            assert here["per_prompt"] == there["per_prompt"], (arm, s)
            assert here["failures"] == there["failures"], (arm, s)
    table = "summary/metrics_long.csv"
    assert (grid["cluster"] / "results" / EXP / table).read_text() == (grid["local"] / "results" / EXP / table).read_text()


@pytest.mark.slurm
def test_every_job_was_a_slurm_job_with_the_requested_resources(grid):
    """sacct lists one completed allocation per Snakemake job, with the memory, time limit and GPU
    Snakemake resolved for it; GPU rules got a GPU of the profile's model, other rules none."""
    out = grid["res"].stdout + grid["res"].stderr
    planned = {r: n for r, n in planned_jobs(grid["res"]).items() if r not in NO_JOB_RULES}
    jobs = sacct(grid["env"], grid["run"])
    per_rule: dict[str, int] = {}
    for job in jobs:
        per_rule[rule_of(job)] = per_rule.get(rule_of(job), 0) + 1
    assert per_rule == planned
    assert {"aggregate", "stats"} <= LOCAL_RULES
    ran_locally = set(re.findall(r"^localrule (\w+):", out, re.M)) - {"all"}
    assert ran_locally == LOCAL_RULES & set(planned_jobs(grid["res"])), ran_locally
    assert all(j["State"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), jobs
    assert {j["Account"] for j in jobs} == {"mmie"}                  # up.sh's account (the plugin's guess)
    resolved = job_resources(out)
    model = profile()["set-resources"]["evaluate"]["gpu_model"]
    gpu_rules = set()
    for job in jobs:
        rule = rule_of(job)
        (res,) = resolved[rule]          # every job of a rule resolves to the same resources here
        res = dict(res)
        assert job["ReqMem"] == f"{res['mem_mb']}M", (rule, job, res)
        assert minutes(job["Timelimit"]) == int(res["runtime"]), (rule, job, res)
        if "gpu" in res:
            gpu_rules.add(rule)
            assert f"gres/gpu:{model}=1" in job["AllocTRES"] and "gres/gpu=1" in job["AllocTRES"], job
        else:
            assert "gres/gpu" not in job["AllocTRES"], job
    assert gpu_rules == {"build_demo_model", "train", "evaluate"}
    assert dict(next(iter(resolved["evaluate"])))["mem_mb"] == str(GPU_MEM)      # from the workflow config
    assert dict(next(iter(resolved["score"])))["mem_mb"] == str(CPU_MEM)


@pytest.mark.slurm
def test_rerun_by_target_path_submits_only_that_job(grid):
    target = f"results/{EXP}/lora/seed0/mixed/metrics.json"
    before = json.loads((grid["cluster"] / target).read_text())
    (grid["cluster"] / target).unlink()
    res = on_slurm(grid["cluster"], grid["env"], "--", target)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert planned_jobs(res) == {"score": 1}
    jobs = sacct(grid["env"], run_id(res))
    assert [(rule_of(j), j["State"]) for j in jobs] == [("score", "COMPLETED")]
    assert jobs[0]["Comment"] == "rule_score_wildcards_lora_0"   # one score job per (arm, seed)
    after = json.loads((grid["cluster"] / target).read_text())
    assert after["metrics"] == before["metrics"] and after["per_prompt"] == before["per_prompt"]


@pytest.mark.slurm
def test_a_failed_job_on_slurm_is_recorded_and_reruns_by_its_target_path(grid):
    """A corrupt stored generations file makes that seed's score job fail on the cluster: the job records
    the failure (SLURM sees it complete; a deterministic error is not retried), the run says so, and
    once the input is repaired the same target path reruns it."""
    work = grid["cluster"]
    gens = work / "results" / EXP / "base" / "seed0" / "retain" / "generations.jsonl"
    target = f"results/{EXP}/base/seed0/retain/metrics.json"
    before = json.loads((work / target).read_text())
    good = gens.read_bytes()
    try:
        gens.write_bytes(b'{"id": "broken", "output": \n' + good)
        (work / target).unlink()
        res = on_slurm(work, grid["env"], "--", target)
    finally:
        gens.write_bytes(good)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    jobs = sacct(grid["env"], run_id(res))
    assert [(rule_of(j), j["State"]) for j in jobs] == [("score", "COMPLETED")], jobs
    rule_log = f"results/{EXP}/logs/score/base/seed0.log"
    assert "JSONDecodeError" in (work / rule_log).read_text()
    record = json.loads((work / "results" / EXP / "failures" / "score" / "arm-base_seed-0.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("JSONDecodeError") and record["log"] == rule_log
    assert json.loads((work / target).read_text())["mmie_failed"]["error"] == record["error"]
    assert "1 job(s) FAILED" in out and f"log: {rule_log}" in out, out[-3000:]
    listed = subprocess.run([sys.executable, "-m", "mmie.failures", f"results/{EXP}"], cwd=work, capture_output=True,
                            text=True, timeout=120, env={**grid["env"], "PYTHONPATH": str(ROOT)})
    assert listed.returncode == 1 and "score (arm=base, seed=0)" in listed.stdout + listed.stderr, listed

    res = on_slurm(work, grid["env"], "--", target)        # repaired: the failed job reruns
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert [(rule_of(j), j["State"]) for j in sacct(grid["env"], run_id(res))] == [("score", "COMPLETED")]
    after = json.loads((work / target).read_text())
    assert after["metrics"] == before["metrics"] and after["per_prompt"] == before["per_prompt"]
    assert json.loads((work / "results" / EXP / "failures" / "score" / "arm-base_seed-0.json").read_text())["status"] == "resolved"


@pytest.mark.slurm
def test_a_job_out_of_memory_is_retried_with_more_then_fails_the_run_naming_its_logs(grid):
    """Running out of memory is no recorded failure: the profile retries the job, each attempt with
    twice the memory and a longer limit, and when every attempt fails the run fails naming the rule's
    and the SLURM job's logs (``MMIE_FAULT=...=oom`` raises MemoryError inside the SLURM job)."""
    work = grid["cluster"]
    target = f"results/{EXP}/base/seed0/retain/metrics.json"
    (work / target).unlink()
    res = on_slurm(work, {**grid["env"], "MMIE_FAULT": "score:base:0=oom"}, "--", target)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    rule_log = f"results/{EXP}/logs/score/base/seed0.log"
    assert "MemoryError: MMIE_FAULT=score:base:0=oom" in (work / rule_log).read_text()
    jobs = sacct(grid["env"], run_id(res))
    retries = profile()["retries"]
    assert [(rule_of(j), j["State"]) for j in jobs] == [("score", "FAILED")] * (1 + retries), jobs
    mem = [int(re.match(r"(\d+)", j["ReqMem"]).group(1)) for j in jobs]
    assert [m / mem[0] for m in mem] == [2 ** k for k in range(1 + retries)], jobs
    assert [minutes(j["Timelimit"]) for j in jobs] == [minutes(jobs[0]["Timelimit"]) * (k + 1)
                                                        for k in range(1 + retries)], jobs
    # Snakemake's error names the rule's log and the SLURM job's log (kept because the job failed)
    last = jobs[-1]
    assert "Error in rule score:" in out and f"SLURM-job '{last['JobID']}' failed" in out, out[-3000:]
    logs = re.findall(r"^\s+log: (.+) \(check log file\(s\) for error details\)$", out, re.M)
    assert logs and all(entry.split(", ")[0] == rule_log for entry in logs), out[-3000:]
    slurm_logs = [Path(part) for entry in logs for part in entry.split(", ")[1:]]
    assert slurm_logs and all(p.is_file() and "rule_score" in p.parts for p in slurm_logs), out[-3000:]
    kept = list((work / ".snakemake").rglob(f"{last['JobID']}.log"))     # the last attempt's SLURM log
    assert len(kept) == 1 and "rule_score" in kept[0].parts, kept
    assert "Error in rule score:" in kept[0].read_text()
    assert not (work / target).exists()
    record = work / "results" / EXP / "failures" / "score" / "arm-base_seed-0.json"
    assert not record.is_file() or json.loads(record.read_text())["status"] == "resolved"    # nothing recorded


def test_a_retried_job_gets_more_memory_and_time():
    """Snakemake evaluates the profile's runtime expressions and the rules' memory functions per
    attempt: the second attempt of a job asks for twice the memory and a longer wall-clock limit."""
    runtime = profile()["set-resources"]["evaluate"]["runtime"]
    assert [eval(runtime, {"attempt": a}) for a in (1, 2, 3)] == [240, 480, 720]
    src = (ROOT / "rules" / "common.smk").read_text()
    body = src[src.index("def gpu_mem"):src.index("\n\n\n", src.index("def cpu_mem"))]
    scope = {"GPU_MEM": 8000, "CPU_MEM": 2000}
    exec(body, scope)
    assert [scope["gpu_mem"](None, a) for a in (1, 2, 3)] == [8000, 16000, 32000]
    assert [scope["cpu_mem"](None, a) for a in (1, 2)] == [2000, 4000]
