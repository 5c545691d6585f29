"""Fault injection (reliability issue): bad input, bad configuration, kills, secrets, truncation.
Each test fails if its guarantee breaks."""
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import EXP, ROOT, SENTINEL, SENTINEL_ENV, SETS, SNAKEMAKE, reduced_config, smk
from mmie.data.corpus import read_role_file
from mmie.errors import DataError

BAD = ROOT / "tests" / "fixtures" / "bad_inputs"


# ----------------------------------------------------------------------------- row 12: bad encodings
@pytest.mark.parametrize("name,line,reason", [
    ("invalid_utf8.jsonl", 2, "invalid UTF-8"),
    ("invalid_json.jsonl", 2, "not valid JSON"),
    ("non_string_field.jsonl", 2, "no text"),
])
def test_bad_line_is_an_error_naming_file_and_line(name, line, reason):
    with pytest.raises(DataError, match=rf"{name}:{line}: {reason}"):
        read_role_file(BAD / name, "forget")


@pytest.mark.parametrize("name,kept,skipped_lines", [
    ("invalid_utf8.jsonl", 2, [2]),
    ("invalid_json.jsonl", 2, [2]),
    ("non_string_field.jsonl", 1, [2, 3, 4]),
])
def test_skip_mode_counts_and_names_the_lines(name, kept, skipped_lines):
    texts, rep = read_role_file(BAD / name, "forget", on_bad_line="skip")
    assert len(texts) == kept
    assert [s["line"] for s in rep.skipped] == skipped_lines
    assert rep.as_dict()["skipped_count"] == len(skipped_lines)


def test_bom_crlf_empty_lines_and_debris_are_handled_and_counted():
    assert read_role_file(BAD / "bom.jsonl", "forget")[0] == ["starts with a BOM", "second"]
    assert read_role_file(BAD / "crlf.jsonl", "forget")[0] == ["windows line one", "windows line two"]
    texts, rep = read_role_file(BAD / "empty_lines.jsonl", "forget")
    assert texts == ["one", "two"] and rep.blank_lines == 3
    texts, rep = read_role_file(BAD / "debris.jsonl", "forget")
    assert texts == ["first item", "quoted and comma"] and rep.debris_cleaned == 4


# ----------------------------------------------------------------------------- bad configuration at -n
def _dry_run_with(tmp_path: Path, mutate) -> subprocess.CompletedProcess:
    reduced_config(tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    mutate(cfg)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return smk(tmp_path, "-n", check=False)


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c.update(sedes=[0]), "sedes"),
    (lambda c: c["generation"].update(max_new_tokens="lots"), "lots"),
    (lambda c: c["data"].update(forget="/nonexistent/forget.jsonl"), "data.forget: file not found"),
    (lambda c: c["arms"].update(magic={"method": "wishful_thinking"}), "wishful_thinking"),
    (lambda c: c.update(seeds=[]), "seeds"),
])
def test_bad_configuration_stops_at_dry_run_naming_the_key(tmp_path, mutate, needle):
    res = _dry_run_with(tmp_path, mutate)
    assert res.returncode != 0
    assert needle in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- kill and resume
def _job_pid(workdir: Path, script: str) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if script in cmd and str(workdir) in cmd:
            return int(pid)
    return None


@pytest.mark.slow
def test_sigkill_of_a_running_job_then_rerun_incomplete_gives_the_uninterrupted_results(run_dir, tmp_path):
    work = tmp_path / "killed run"
    shutil.copytree(run_dir, work, symlinks=True)
    seed_dir = work / "results" / EXP / "base" / "seed0"
    shutil.rmtree(seed_dir)
    targets = [f"results/{EXP}/base/seed0/{s}/metrics.json" for s in SETS]
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile", str(work / "config.yaml"),
                       "--cores", "2", "--", *targets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **SENTINEL_ENV})
    victim, deadline = None, time.time() + 180
    while victim is None and time.time() < deadline and proc.poll() is None:
        victim = _job_pid(work, "evaluate.py")
        time.sleep(0.2)
    assert victim is not None, "the evaluate job never started"
    partial = seed_dir / ".partial"
    while not list(partial.glob("*.key")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)          # kill it once at least one set is finished (and kept)
    assert list(partial.glob("*.key")), "the evaluate job finished no set before the deadline"
    os.kill(victim, signal.SIGKILL)
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode != 0, out[-2000:]
    # nothing half-written is left behind as done: every JSONL present parses completely
    for f in seed_dir.rglob("*.jsonl") if seed_dir.exists() else []:
        for line in f.read_text().splitlines():
            json.loads(line)
    kept = sorted(p.stem for p in partial.glob("*.key"))
    smk(work, "--rerun-incomplete", "--", *targets)
    # the rerun reused the sets the killed job had finished, and cleaned up after itself
    manifest = json.loads((seed_dir / "evaluate.json").read_text())
    assert kept and set(kept) <= set(manifest["reused_sets"]) and not partial.exists()
    def model_metrics(m: dict) -> tuple[dict, dict]:
        # the judge's scores are left out: the loopback judge's first answer of the session was an error
        return ({k: v for k, v in m["metrics"].items() if not k.startswith("judge_")},
                {k: v for k, v in m["per_prompt"].items() if not k.startswith("judge_")})

    for s in SETS:
        a = json.loads((run_dir / "results" / EXP / "base" / "seed0" / s / "metrics.json").read_text())
        b = json.loads((seed_dir / s / "metrics.json").read_text())
        assert model_metrics(a) == model_metrics(b), s


# ----------------------------------------------------------------------------- secrets
@pytest.mark.slow
def test_api_keys_never_reach_an_output(run_dir, gemini_server):
    """End to end: the reduced run had the judge on, with the sentinel key in the environment, against
    a server whose first answer echoed the key back in its error. Build the report too, then scan
    every file of the run — outputs, job logs, the report, Snakemake's own logs — for the key."""
    report = run_dir / "report.html"
    smk(run_dir, "--report", str(report))
    # the judge really ran: every request carried the key, and every set of every run has its scores
    # (or, for the poisoned request, a recorded failure with the key redacted)
    assert gemini_server.calls and all(c["key"] == SENTINEL for c in gemini_server.calls)
    judged = [json.loads(p.read_text()) for p in (run_dir / "results" / EXP).rglob("judge.json")]
    assert judged and sum("judge_target_rate" in j["metrics"] for j in judged) >= len(judged) - 1
    failed = [j["failures"]["judge_target_rate"] for j in judged if j["failures"]]
    assert failed and all("[redacted]" in f and "HTTP 400" in f for f in failed)
    scanned = [p for p in run_dir.rglob("*") if p.is_file()]
    assert report in scanned and any(".snakemake/log" in str(p) for p in scanned)
    leaks = [str(p) for p in scanned if SENTINEL.encode() in p.read_bytes()]
    assert leaks == []


# ----------------------------------------------------------------------------- row 5: truncation
def test_truncation_above_the_configured_share_is_logged(caplog):
    from mmie.data.corpus import warn_truncation

    with caplog.at_level(logging.WARNING):
        warn_truncation("forget", truncated=3, total=10, limit=0.05, what="prompts")
        warn_truncation("retain", truncated=0, total=10, limit=0.05, what="prompts")
    assert "forget: 30.0% of prompts" in caplog.text and "retain" not in caplog.text


# ----------------------------------------------------------------------------- row 10: device placement
def test_hooks_move_their_tensors_to_the_hidden_states_device_and_dtype(monkeypatch):
    import torch

    from mmie.model.hooks import to_hidden

    hidden = torch.zeros(2, 3, 4, dtype=torch.bfloat16)
    moved = to_hidden(torch.ones(4, dtype=torch.float32), hidden)
    assert moved.dtype == torch.bfloat16 and moved.device == hidden.device

    class FakeDevice:
        type = "cuda"

        def __eq__(self, other):
            return False

    module = torch.nn.Linear(4, 4)
    calls = []
    monkeypatch.setattr(module, "to", lambda device: calls.append(device) or module)
    fake_hidden = torch.zeros(1, 4)
    monkeypatch.setattr(type(fake_hidden), "device", property(lambda self: FakeDevice()), raising=False)
    try:
        to_hidden(module, fake_hidden)
    finally:
        monkeypatch.undo()
    assert len(calls) == 1 and isinstance(calls[0], FakeDevice)
