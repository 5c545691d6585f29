"""The GPU benchmark also runs on a CPU with a tiny model, so CI checks that it works (not its speed)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


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


def test_gpu_check_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
