"""The container path (real-model issue): Snakemake's exact apptainer calls, through a stub on PATH;
the Dockerfile installs exactly the README's pins."""
import os
import re
import shlex
import subprocess

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, reduced_config

pytestmark = pytest.mark.slow


def test_sdm_apptainer_pulls_the_configured_image_and_execs_with_nv(tmp_path):
    work = tmp_path / "apptainer run"
    work.mkdir()
    reduced_config(work)
    log = tmp_path / "calls.log"
    env = {**os.environ, "APPTAINER_STUB_LOG": str(log),
           "PATH": f"{ROOT / 'tests' / 'stubs'}:{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}"}
    target = "results/t/data/prepare_report.json"
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile", str(work / "config.yaml"),
                       "--profile", str(ROOT / "profiles" / "apptainer"), "--cores", "1", "--", target]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (work / target).is_file()
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    image = yaml.safe_load((ROOT / "config.yaml").read_text()).get("container") or \
        yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())["properties"]["container"]["default"]
    pulls = [c for c in calls if c[0] == "pull"]
    assert len(pulls) == 1 and pulls[0][-1] == image and "--name" in pulls[0]
    execs = [c for c in calls if c[0] == "exec"]
    assert execs, calls
    for c in execs:
        assert "--nv" in c and "--home" in c
        assert any(arg.endswith(".simg") for arg in c)             # the pulled image
        assert c[-3:-1] == ["bash", "-c"] and "prepare_data" in c[-1]


def test_dockerfile_installs_exactly_the_readme_pins():
    docker = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for pins in ("requirements.txt", "requirements-nodeps.txt", "constraints.txt"):
        assert pins in docker and pins in makefile
    assert re.search(r"pip install .*-r /tmp/pins/requirements\.txt -c /tmp/pins/constraints\.txt", docker)
    assert "--no-deps -r /tmp/pins/requirements-nodeps.txt" in docker
    assert "HF_HOME=/hf-cache" in docker and "org.opencontainers.image.revision" in docker
    # the torch of the image is the pinned version, asserted at build time
    torch_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    assert torch_pin == "torch==2.13.0" and "startswith('2.13.0')" in docker


def test_real_profiles_validate_and_list_the_full_dag():
    for profile, expected in (("qwen2.5-1.5b-a100.yaml", {"select_layers": 1, "train_lora": 3, "train_reft": 3, "evaluate": 30}),
                              ("gemma3-270m.yaml", {"convert_gemma": 1, "select_layers": 1, "train_lora": 3, "evaluate": 30})):
        res = subprocess.run(SNAKEMAKE + ["-n", "--forceall", "--cores", "2", "--configfile", str(ROOT / "config" / profile)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        out = res.stdout + res.stderr
        for rule, n in expected.items():
            assert re.search(rf"^{rule}\s+{n}$", out, re.M), (profile, rule)
