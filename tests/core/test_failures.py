"""Recorded failures (mmie/failures.py): a failing job's outputs become stubs and a record, a job
reading a stub is blocked without running, a rerun that succeeds resolves the record without
changing the rerun token, memory errors are not recorded, and the summary side parses the stubs."""
import json
from types import SimpleNamespace

import pytest
from snakemake.io import directory
from snakemake.iocontainers import Namedlist

from mmie import failures as F


def job(tmp_path, rule="train", inputs=(), outputs=None, **wildcards):
    wildcards = wildcards or {"arm": "lora", "seed": "0"}
    outputs = outputs or [directory(str(tmp_path / "results/x/checkpoints/lora/seed0"))]
    return SimpleNamespace(rule=rule, wildcards=Namedlist(fromdict=wildcards), config={"experiment": "x"},
                           input=Namedlist(list(inputs)), output=Namedlist(list(outputs)),
                           log=Namedlist([str(tmp_path / f"{rule}.log")]))


@pytest.fixture()
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMIE_FAULT", raising=False)
    return tmp_path


def fail(snakemake, exc=None):
    exc = exc or ValueError("retain perplexity over budget: lower train.lr")
    ran = []
    with F.outcome(snakemake) as run:
        if run:
            ran.append(True)
            raise exc
    return ran


def test_a_failure_becomes_stubs_and_a_record(here):
    ckpt = here / "results/x/checkpoints/lora/seed0"
    ckpt.mkdir(parents=True)
    (ckpt / "partial.bin").write_text("half")            # what the failed work left behind is removed
    sm = job(here)
    assert fail(sm) == [True]
    stub = F.stub_of(ckpt)
    assert stub["rule"] == "train" and stub["wildcards"] == {"arm": "lora", "seed": "0"}
    assert stub["error"].startswith("ValueError: retain perplexity over budget")
    assert sorted(p.name for p in ckpt.iterdir()) == [F.DIR_MARKER]
    record = json.loads(F.record_path("results/x", "train", {"arm": "lora", "seed": "0"}).read_text())
    assert record["status"] == "failed" and record["log"].endswith("train.log")
    assert F.token("results/x", "train", {"seed": "0", "arm": "lora"}) == record["failed_at"] != ""
    assert [r["rule"] for r in F.unresolved("results/x")] == ["train"]
    assert "train (arm=lora, seed=0)" in F.banner("results/x") and F.main(["results/x"]) == 1


def test_a_job_reading_a_stub_does_not_run_and_names_the_origin(here):
    ckpt = here / "results/x/checkpoints/lora/seed0"
    fail(job(here))
    outs = [str(here / f"results/x/lora/seed0/{s}/generations.jsonl") for s in ("forget", "retain")]
    sm = job(here, rule="evaluate", inputs=[str(here / "model"), str(ckpt)], outputs=outs)
    ran = []
    with F.outcome(sm) as run:
        if run:
            ran.append(True)
    assert ran == []
    for out in outs:
        stub = F.stub_of(out)
        assert stub["rule"] == "evaluate" and stub["blocked_by"]["rule"] == "train"
        assert stub["blocked_by"]["error"].startswith("ValueError")
    # evaluate itself did not fail: no record of its own, nothing for it to rerun on
    assert F.token("results/x", "evaluate", {"arm": "lora", "seed": "0"}) == ""
    ok, rows = F.split(outs + [str(here / "results/x/base/seed0/forget/generations.jsonl")])
    assert ok == [str(here / "results/x/base/seed0/forget/generations.jsonl")]
    assert rows == [{"arm": "lora", "seed": 0, "rule": "train", "wildcards": "arm=lora, seed=0",
                     "error": rows[0]["error"], "log": rows[0]["log"], "sets": "forget retain"}]


def test_a_successful_rerun_resolves_the_record_and_keeps_the_token(here):
    sm = job(here)
    fail(sm)
    tok = F.token("results/x", "train", {"arm": "lora", "seed": "0"})
    with F.outcome(sm) as run:
        assert run
    assert F.token("results/x", "train", {"arm": "lora", "seed": "0"}) == tok
    assert F.unresolved("results/x") == [] and F.banner("results/x") == "" and F.main(["results/x"]) == 0


def test_memory_errors_are_not_recorded(here):
    with pytest.raises(MemoryError):
        fail(job(here), MemoryError("out of memory"))
    assert F.unresolved("results/x") == []


def test_real_files_are_never_taken_for_stubs(here):
    for name, body in (("a.json", '{"metrics": {}}'), ("b.jsonl", '{"mmie": 1}\n'), ("c.bin", "\x00\x01")):
        (here / name).write_text(body)
        assert F.stub_of(here / name) is None
    assert F.stub_of(here / "missing.json") is None


def test_fault_injection_names_exactly_one_job(here, monkeypatch):
    monkeypatch.setenv("MMIE_FAULT", "train:lora:0")
    with F.outcome(job(here, arm="lora", seed="1")) as run:
        assert run
    ran = []
    with F.outcome(job(here)) as run:
        ran.append(run)
    assert ran == [False]     # the injected fault fires before the work runs
    assert F.stub_of(here / "results/x/checkpoints/lora/seed0")["error"].startswith("FaultInjected")


def test_a_rule_scripts_plain_output_strings_keep_folders_folders(here):
    """In a rule script the directory() flag is gone: a suffix-less output is still written as a folder."""
    sm = job(here, outputs=["results/x/checkpoints/lora/seed0", "results/x/tune/lora.json"])
    fail(sm)
    assert (here / "results/x/checkpoints/lora/seed0" / F.DIR_MARKER).is_file()
    assert F.stub_of(here / "results/x/tune/lora.json")["rule"] == "train"


def test_an_injected_oom_is_not_recorded_and_fails_the_job(here, monkeypatch):
    """``=oom`` raises MemoryError out of the job (Snakemake retries it with more memory): no record,
    no stub; an unknown fault kind is an error, not a silent no-op."""
    monkeypatch.setenv("MMIE_FAULT", "train:lora:0=oom")
    with pytest.raises(MemoryError, match="out of memory on purpose"):
        with F.outcome(job(here)):
            pass
    assert F.unresolved("results/x") == []
    assert F.stub_of(here / "results/x/checkpoints/lora/seed0") is None
    monkeypatch.setenv("MMIE_FAULT", "train:lora:0=segfault")
    with pytest.raises(ValueError, match="unknown fault 'segfault'"):
        with F.outcome(job(here)):
            pass


def test_a_partial_failure_stubs_only_the_failed_parts(here):
    """The attack job runs every attack of an (arm, seed): one failed attack costs its own output only;
    the job is recorded (and reruns) like any failure."""
    outs = [str(here / f"results/x/lora/seed0/robustness/{a}.json") for a in ("relearn", "quantize")]
    for o in outs:
        (here / o).parent.mkdir(parents=True, exist_ok=True)
        (here / o).write_text('{"attack": "done"}\n')
    sm = job(here, rule="attack", outputs=outs)
    assert fail(sm, F.PartialFailure({outs[1]: "quantize: RuntimeError: no 4-bit kernel"})) == [True]
    assert F.stub_of(outs[0]) is None and json.loads((here / outs[0]).read_text()) == {"attack": "done"}
    assert F.stub_of(outs[1])["error"].startswith("PartialFailure: quantize.json: quantize: RuntimeError")
    assert F.token("results/x", "attack", {"arm": "lora", "seed": "0"}) != ""
    with pytest.raises(ValueError, match="not outputs of the job"):
        fail(job(here, rule="attack", outputs=outs[:1]), F.PartialFailure({outs[1]: "x"}))
