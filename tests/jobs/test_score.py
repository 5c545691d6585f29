"""The score rule: one job scores every set of an (arm, seed), without torch (speed issue)."""
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, write_lines
from mmie import io
from mmie.config import eval_sets
from mmie.jobs import evaluate as evaluate_job
from mmie.lang.lid import fit_detector

HEAVY = ("torch", "transformers", "peft", "pyreft", "sae_lens")


def outputs_for(name: str, i: int) -> str:
    return ["नमस्ते दुनिया यह हिंदी है", "hello world this is English", "namaste duniya yah hindi hai"][i % 3] + f" {name}"


@pytest.fixture
def run(tmp_path, demo_config, demo_texts):
    """Stored generations of every configured set, a manifest, MIA scores and per-set judge scores
    whose target rate differs by set (so a mix-up between sets shows)."""
    cfg = demo_config
    det = fit_detector(cfg["lid"], cfg["languages"], {c: demo_texts[c][:100] for c in ("hi", "en", "ur", "pa", "bn")})
    det.save(tmp_path / "detector.json")
    root = tmp_path / "base" / "seed0"
    gens, outs, judges, rates = [], [], [], {}
    for k, info in enumerate(eval_sets(cfg)):
        n = 4
        rows = [{"id": f"{info.name}{i}", "prompt": "p", "output": outputs_for(info.name, i), "prompt_truncated": False,
                 "output_tokens": 5, "gen_nll_base": 10.0, "gen_tokens_base": 5, "gen_nll_uncond": 12.0,
                 "gen_tokens_uncond": 6, **({"answer": "yes"} if info.kind == "yes_no" else {}),
                 **({"translation": "hello world"} if info.kind == "comprehension" else {})}
                for i in range(n)]
        gens.append(write_lines(root / info.name / "generations.jsonl", rows))
        flagged = [int(i < k % (n + 1)) for i in range(n)]
        rates[info.name] = sum(flagged) / n
        judged = {"per_prompt": {"id": [r["id"] for r in rows], "judge_target": flagged, "judge_score": [float(f) for f in flagged]},
                  "metrics": {"judge_target_rate": rates[info.name]}, "failures": {}}
        io.write_json(root / info.name / "judge.json", judged)
        judges.append(root / info.name / "judge.json")
        outs.append(root / info.name / "metrics.json")
    write_lines(root / "mia.jsonl", [{"id": f"m{i}", "member": i % 2, "mink_pp": float(i), "loss_score": float(-i)}
                                     for i in range(8)])
    refs = {lab: {"nll": 30.0, "tokens": 10} for lab in ("hi", "en", "ur", "pa", "bn", "hi_rom")}
    io.write_json(root / "evaluate.json", {"oom_retries": [], "fluency_reference": refs, "provenance": {
        "runtime": {"dtype": "float32"}, "git": {"commit": "x"}, "device": {"device": "cpu"}, "config_hash": "h"}})
    return {"config": cfg, "root": root, "gens": [str(p) for p in gens], "outs": [str(p) for p in outs],
            "judges": [str(p) for p in judges], "rates": rates, "detector": str(tmp_path / "detector.json")}


def call(run, **over):
    args = {"generations": run["gens"], "manifest": str(run["root"] / "evaluate.json"), "lid_detector": run["detector"],
            "outputs": run["outs"], "mia": str(run["root"] / "mia.jsonl"), "judges": run["judges"], **over}
    evaluate_job.score(run["config"], "base", 0, **args)


def test_one_call_writes_every_sets_metrics_with_its_own_judge_scores_and_mia_on_forget_only(run):
    call(run)
    assert len(set(run["rates"].values())) > 1
    for info in eval_sets(run["config"]):
        m = io.read_json(run["root"] / info.name / "metrics.json")
        assert (m["arm"], m["seed"], m["set"]) == ("base", 0, info.name)
        assert m["per_prompt"]["id"] == [f"{info.name}{i}" for i in range(4)]
        assert m["metrics"]["judge_target_rate"] == run["rates"][info.name], info.name
        assert "judge_agreement" in m["diagnostics"]
        assert ("mia_auc" in m["metrics"]) == (info.name == "forget"), info.name
        assert m["provenance"]["rule"] == "score" and m["provenance"]["evaluate"]["config_hash"] == "h"
    # fluency_ratio: each output's NLL under base without its prompt (12 over 6 tokens) against the human
    # reference of its language (30 over 10 tokens): exp(2 - 3) for every output in a language
    m = io.read_json(run["root"] / "retain" / "metrics.json")
    assert m["metrics"]["fluency_ratio"] == pytest.approx(math.exp(-1.0))


def test_without_the_judge_no_judge_metric(run):
    call(run, judges=None)
    m = io.read_json(run["root"] / "retain" / "metrics.json")
    assert "judge_target_rate" not in m["metrics"] and "judge_agreement" not in m["diagnostics"]


def test_a_missing_set_or_a_bad_file_names_what_is_wrong(run):
    with pytest.raises(ValueError, match=r"generations for sets .* evaluation sets are .*rules/evaluate.smk"):
        call(run, generations=run["gens"][1:])
    with pytest.raises(ValueError, match=r"judge scores for sets"):
        call(run, judges=run["judges"][:-1])
    with pytest.raises(ValueError, match=r"<set>/metrics.json"):
        call(run, outputs=[p.replace("metrics.json", "m.json") for p in run["outs"]])
    broken = run["root"] / "mixed" / "generations.jsonl"
    broken.write_text('{"id": "x", "output": \n', encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as err:
        call(run)
    assert any("'mixed'" in note and str(broken) in note for note in err.value.__notes__)


def test_scoring_imports_no_torch_or_model_library(run):
    """The score job's interpreter stays light: no torch, transformers, peft, pyreft or sae_lens."""
    code = ("import json, sys\n"
            "from mmie.config import load\n"
            "from mmie.jobs import evaluate as evaluate_job\n"
            f"a = json.loads(sys.argv[1])\n"
            "evaluate_job.score(load(a.pop('config')), 'base', 0, **a)\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    args = {"config": str(ROOT / "config.yaml"), "generations": run["gens"], "manifest": str(run["root"] / "evaluate.json"),
            "lid_detector": run["detector"], "outputs": run["outs"], "mia": str(run["root"] / "mia.jsonl"),
            "judges": run["judges"]}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.splitlines()[-1]) == []
    assert (run["root"] / "yes_no" / "metrics.json").is_file()


def test_lid_scoring_runs_on_one_blas_thread(run, monkeypatch):
    """langid's per-text matrix-vector product on a multithreaded BLAS cost 12x the CPU time next to
    other jobs on 2 cores; scoring pins BLAS to one thread (and leaves the caller's setting alone)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import mmie.stats.sets as sets

    seen, original = [], sets.compute_set_metrics

    def spy(*args, **kwargs):
        seen.append({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})
        return original(*args, **kwargs)

    monkeypatch.setattr(sets, "compute_set_metrics", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        call(run)
        after = {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    assert seen and all(s == {1} for s in seen), seen
    assert after == {2}
