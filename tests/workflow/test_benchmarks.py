"""The GPU benchmark also runs on a CPU with a tiny model, so CI checks that it works (not its speed).
The benchmark table and the GPU cost model are checked on hand-computed inputs."""
import copy
import json
import subprocess
import sys

import pytest

from benchmarks import cost_model, rule_times
from conftest import ROOT
from mmie.config import set_names


@pytest.mark.slow
def test_bench_runs_on_cpu_and_prints_one_json_line_per_figure():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--tiny"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    figures = {(r["figure"], r.get("method")) for r in rows}
    assert figures == {("generation_tokens_per_s", "mmie_batched"), ("generation_tokens_per_s", "naive_per_prompt"),
                       ("lora_training_tokens_per_s", None), ("activation_cache_tokens_per_s", None),
                       ("sae_training_tokens_per_s", None)}
    assert all(r["device"] == "cpu" and r["value"] > 0 for r in rows)


@pytest.mark.slow
def test_gpu_check_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0


# ----------------------------------------------------------------------------- the per-rule table
def bench_file(root, rel, s, rss):
    path = root / "benchmarks" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t0\t1\n")


def test_rule_table_counts_jobs_sums_seconds_and_takes_peak_memory(tmp_path, monkeypatch):
    bench_file(tmp_path, "evaluate/base/seed0.tsv", 10.0, 500)
    bench_file(tmp_path, "evaluate/lora+sae_gate/seed0.tsv", 20.0, 700)
    bench_file(tmp_path, "score/base/seed0.tsv", 3.0, "NA")
    bench_file(tmp_path, "stats.tsv", 1.0, 90)
    jobs = rule_times.read_benchmarks(tmp_path)
    assert [a if isinstance(a, str) else None for a in jobs["arm"]] == ["base", "lora+sae_gate", "base", None]
    table = rule_times.rule_table(jobs)
    assert table.loc["evaluate"].tolist() == [2, 0, 30.0, 15.0, 700.0]
    assert table.loc["score", "jobs"] == 1 and table.loc["score", "max_rss_mb"] != table.loc["score", "max_rss_mb"]  # NaN

    arms = {"base": {"method": "base"}, "lora": {"method": "lora"}, "lora+sae_gate": {"method": "sae_gate", "on": "lora"}}
    probed = []

    def fake_probe(modules, repeats):
        probed.append(modules)
        return 0.5 + 0.25 * len(modules)

    monkeypatch.setattr(rule_times, "import_seconds", fake_probe)
    jobs, _ = rule_times.add_startup(jobs, arms)
    assert len(probed) == 4                                              # one probe per distinct module list
    gated = rule_times.job_modules("evaluate", "lora+sae_gate", arms)
    assert "peft" in gated and "sae_lens" in gated and "torch" in gated
    assert "torch" not in rule_times.job_modules("score", "base", arms)
    startup = [0.5 + 0.25 * len(rule_times.job_modules(r, a, arms)) for r, a in zip(jobs["rule"], jobs["arm"], strict=True)]
    s = rule_times.summary(jobs)
    assert s["jobs"] == 4 and s["job_seconds"] == 34.0
    assert s["startup_share"] == pytest.approx(sum(startup) / 34.0)
    md = rule_times.markdown(jobs, "results/t", "abc1234")
    assert "commit abc1234" in md and "| evaluate | 2 | 0 | 30.0 | 15.00 | 700 |" in md and "| score | 1 | 0 | 3.0 | 3.00 | n/a |" in md


def test_a_warm_job_reports_the_start_up_and_memory_it_logged_not_its_clients(tmp_path, monkeypatch):
    """A warm-started job's benchmark measured only the client (a few MB): the table takes the job's
    peak memory and start-up from the line the fork wrote to the rule's log (the last run's)."""
    from mmie.forkserver import USAGE

    bench_file(tmp_path, "evaluate/base/seed0.tsv", 10.0, 25)
    bench_file(tmp_path, "evaluate/base/seed1.tsv", 12.0, 900)
    log = tmp_path / "logs" / "evaluate" / "base" / "seed0.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"old run\n... INFO mmie.forkserver: {USAGE.format(0.4, 9.0, 1000)}\n"
                   f"... INFO mmie.forkserver: {USAGE.format(0.15, 8.0, 1200)}\n")
    (tmp_path / "logs" / "evaluate" / "base" / "seed1.log").write_text("a cold job's log\n")
    jobs = rule_times.read_benchmarks(tmp_path)
    assert jobs["warm"].tolist() == [True, False]
    assert jobs["max_rss_mb"].tolist() == [1200.0, 900.0]
    monkeypatch.setattr(rule_times, "import_seconds", lambda modules, repeats: 5.0)
    jobs, _ = rule_times.add_startup(jobs, {"base": {"method": "base"}})
    assert jobs["startup_s"].tolist() == [0.15, 5.0]   # measured for the warm job, estimated for the cold one
    assert rule_times.rule_table(jobs).loc["evaluate", "warm"] == 1
    assert "| evaluate | 2 | 1 | 22.0 | 11.00 | 1200 | 5.2 |" in rule_times.markdown(jobs, "results/t", "abc")


def test_rule_table_refuses_a_folder_without_benchmarks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no benchmark files"):
        rule_times.read_benchmarks(tmp_path)


# ----------------------------------------------------------------------------- the GPU cost model
@pytest.fixture
def tiny_grid(demo_config):
    cfg = copy.deepcopy(demo_config)
    cfg["seeds"] = [0, 1]
    cfg["languages"]["neighbours"] = {"ur": cfg["languages"]["neighbours"]["ur"]}
    cfg["data"]["neighbours"] = {"ur": cfg["data"]["neighbours"]["ur"]}
    cfg["data"].update(mixed=None, adversarial=None)
    cfg["arms"] = {"base": cfg["arms"]["base"], "lora": copy.deepcopy(cfg["arms"]["lora"]), "sae_gate": cfg["arms"]["sae_gate"]}
    cfg["arms"]["lora"]["train"].update(max_steps=4, batch_size=2, max_length=6, eval_every=2, heldout_items=4)
    cfg["eval"].update(max_prompts=2, max_length=5, mia_max_items=4)
    cfg["generation"]["max_new_tokens"] = 3
    cfg["layers"]["force_layers"] = None
    cfg["layers"]["selection"].update(n_layers=1, candidates=None, resamples=2, causal_prompts=2, causal_max_new_tokens=4,
                                      max_texts=5)
    cfg["layers"]["activations"].update(max_texts=8, max_length=7)
    cfg["sae"]["train_tokens"] = 1000
    cfg["gate"].update(sweep_alphas=[0.0, 1.0], sweep_prompts=3)
    return cfg


def test_cost_model_arithmetic_on_a_hand_computed_grid(tiny_grid):
    assert set_names(tiny_grid) == ["forget", "retain", "romanized", "ur", "comprehension", "yes_no"]   # 6 sets
    tp = {"generate": 2.0, "forward": 10.0, "train": 4.0, "sae": 100.0, "device": "hand"}
    pred = cost_model.predict(tiny_grid, tp, model_layers=3, job_overhead_s=1.0)
    got = {r["rule"]: (r["jobs"], r["generate"], r["forward"], r["train"], r["sae"], r["gpu_s_per_job"]) for r in pred["rows"]}
    assert got == {
        # 3 arms x 2 seeds; 6 sets x 2 prompts x 3 new tokens; refs 6*2*5 + outputs 6*2*(5+3) + KL 2*5 + MIA 2*4*5
        "evaluate": (6, 36, 206, 0, 0, pytest.approx(36 / 2 + 206 / 10 + 1)),
        # 4 steps x 2 x 6 tokens x (forget + retain); held-out checks (4 // 2 + 2) x 2 roles x 4 texts x 6
        "train (lora)": (2, 0, 192, 96, 0, pytest.approx(192 / 10 + 96 / 4 + 1)),
        # (1 base + 2 resamples x 3 candidate layers) x 2 prompts x 4 tokens; (target, retain, ur) x 5 texts x 7
        "select_layers": (1, 56, 105, 0, 0, pytest.approx(56 / 2 + 105 / 10 + 1)),
        # (forget, romanized, retain, gibberish, ur) x 8 texts x 7 tokens, one layer
        "cache_activations": (1, 0, 280, 0, 0, pytest.approx(280 / 10 + 1)),
        "train_sae": (1, 0, 0, 0, 1000, pytest.approx(1000 / 100 + 1)),
        # 2 seeds of the one sweep arm; 2 methods x 2 alphas x 3 prompts x 3 tokens; x 5 retain tokens
        "sweep_gate": (2, 36, 60, 0, 0, pytest.approx(36 / 2 + 60 / 10 + 1)),
    }
    assert pred["gpu_hours"] == pytest.approx((6 * 39.6 + 2 * 44.2 + 39.5 + 29 + 11 + 2 * 25) / 3600)


def test_cost_model_reads_bench_output_and_names_a_missing_figure(tmp_path):
    lines = [{"device": "H", "figure": "generation_tokens_per_s", "method": "naive_per_prompt", "value": 5},
             {"device": "H", "figure": "generation_tokens_per_s", "method": "mmie_batched", "value": 50},
             {"device": "H", "figure": "activation_cache_tokens_per_s", "value": 500},
             {"device": "H", "figure": "lora_training_tokens_per_s", "value": 40}]
    path = tmp_path / "bench.jsonl"
    path.write_text("warming up\n" + "".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match="sae_training_tokens_per_s"):
        cost_model.read_throughputs(path)
    path.write_text(path.read_text() + json.dumps({"device": "H", "figure": "sae_training_tokens_per_s", "value": 9e5}) + "\n")
    assert cost_model.read_throughputs(path) == {"device": "H", "generate": 50.0, "forward": 500.0, "train": 40.0, "sae": 9e5}


def test_cost_model_without_throughputs_prints_the_token_counts(capsys):
    cost_model.main([str(ROOT / "config.yaml")])
    out = capsys.readouterr().out
    assert "### Tokens per GPU job" in out and "GPU-h" not in out
    assert "| evaluate | 36 | 15,360 |" in out          # 12 arms x 3 seeds; 10 sets x 48 prompts x 32 tokens


def test_lid_voter_variants_switch_exactly_one_voter():
    from benchmarks import lid_voters
    from mmie.config import load

    lid = load(ROOT / "config.yaml")["lid"]
    assert lid["voters"]["langid"] and lid["voters"]["fasttext"]["enabled"]
    off = lid_voters.variant_config(lid, lid_voters.VARIANTS["without langid"])
    assert off["voters"]["langid"] is False and off["voters"]["fasttext"] == lid["voters"]["fasttext"]
    off = lid_voters.variant_config(lid, lid_voters.VARIANTS["without fastText"])
    assert off["voters"]["fasttext"]["enabled"] is False and off["voters"]["langid"] is True
    assert off["voters"]["fasttext"]["model"] == lid["voters"]["fasttext"]["model"] and lid["voters"]["fasttext"]["enabled"]
