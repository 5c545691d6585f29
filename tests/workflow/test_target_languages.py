"""Every target language of the demo corpus works with the defaults (issue 24): the example study per
target (config/studies/forget-<code>.yaml: the other three as neighbours, schema defaults, demo model)
plans every arm on every set it configures, and only those."""
import re
import subprocess

import pytest
import yaml

from conftest import DEMO, ROOT, SNAKEMAKE, planned_jobs
from mmie import config as mcfg

CODES = ("hi", "ur", "pa", "bn")
# sets beyond forget, retain, romanized and the neighbours: the Hindi demo data only
HINDI_ONLY = ["mixed", "adversarial", "comprehension", "yes_no"]


def plan(workdir, code: str) -> subprocess.CompletedProcess:
    (workdir / "data").mkdir()
    (workdir / "data" / "demo").symlink_to(DEMO, target_is_directory=True)
    cmd = SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2",
                       "--configfile", str(ROOT / "config" / "studies" / f"forget-{code}.yaml")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.parametrize("code", CODES)
def test_each_target_language_study_plans_every_arm_and_set(tmp_path, code):
    path = ROOT / "config" / "studies" / f"forget-{code}.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    others = [c for c in CODES if c != code]
    assert raw["languages"]["target"]["code"] == code and sorted(raw["languages"]["neighbours"]) == sorted(others)
    assert raw["model"] == {"source": "demo"}
    # schema defaults otherwise: no feature, gate, stats, layer or training tuning in the study
    assert not {"features", "gate", "gates", "stats", "layers", "sae", "eval", "seeds"} & set(raw)
    assert all(set(spec) <= {"method", "on", "instruction"} for spec in raw["arms"].values())
    config = mcfg.load(path)
    sets = mcfg.set_names(config)
    want = ["forget", "retain", "romanized", *others] + (HINDI_ONLY if code == "hi" else [])
    assert sorted(sets) == sorted(want)
    res = plan(tmp_path, code)
    out = res.stdout + res.stderr
    jobs = planned_jobs(res)
    # every seeded arm x 3 seeds, every seed-independent arm once; the layer arms wait for the checkpoint
    grid = {a: mcfg.arm_seeds(config, a) for a in config["arms"]}
    assert jobs["evaluate"] == jobs["score"] == sum(map(len, grid.values())), jobs
    assert jobs["train"] == 3 * 3 and jobs["select_layers"] == 1 and jobs["stats"] == 1
    for arm, seeds in grid.items():
        for seed in seeds:
            outputs = re.search(rf"output: (results/forget-{code}/{re.escape(arm)}/seed{seed}/forget/metrics\.json[^\n]*)",
                                out)
            assert outputs, (arm, seed)
            planned = set(re.findall(rf"{re.escape(arm)}/seed{seed}/([^/]+)/metrics\.json", outputs.group(1)))
            assert planned == set(want), (arm, seed, planned)
    # the Hindi-specific demo files belong to the Hindi study only
    hindi_files = ("forget_romanized.jsonl", "mixed.jsonl", "adversarial.jsonl", "gibberish_hi.jsonl",
                   "translations.jsonl", "yes_no.jsonl")
    assert any(f in out for f in hindi_files) == (code == "hi")
    # default gates on sets the study does not configure are "not configured", not failures
    assert set(mcfg.gates_not_configured(config)) == (set() if code == "hi" else {"mixed_es", "adversarial_target_rate"})
