"""envs/ is the conda environment of every rule and pins what the lock pins (constraints.txt,
requirements*.txt). Conda itself cannot run here (offline, not installed): these checks are static."""
import re

import yaml

from conftest import ROOT
from tests.image.checks import parse_pins as pins  # one reader of pin files (the image's lock check too)

ENV = ROOT / "envs" / "mmie.yaml"


def lock_file(name: str) -> dict[str, str]:
    return pins((ROOT / name).read_text().splitlines())


def env_pins() -> tuple[list, dict[str, str]]:
    env = yaml.safe_load(ENV.read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return [d for d in deps if isinstance(d, str)], pins(pip)


def test_env_pins_are_the_lock():
    conda, pip = env_pins()
    assert "python=3.11" in conda and "pip" in conda
    lock = lock_file("constraints.txt")
    direct = lock_file("requirements.txt")
    # the direct pins and the lock agree with each other, and the environment carries both exactly
    assert {k: lock[k] for k in direct} == direct
    assert {k: pip.get(k) for k in lock} == lock
    assert set(pip) == set(lock), sorted(set(pip) ^ set(lock))


def test_no_deps_packages_are_installed_by_the_post_deploy_script():
    script = (ROOT / "envs" / "mmie.post-deploy.sh").read_text()
    line = next(line for line in script.splitlines() if line.startswith("pip install"))
    assert line.startswith("pip install --no-deps ")
    assert pins(line.split()[3:]) == lock_file("requirements-nodeps.txt")
    _, pip = env_pins()
    assert not set(lock_file("requirements-nodeps.txt")) & set(pip)   # never with their dependencies


def test_every_rule_that_runs_code_has_the_environment():
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=\s*(?:rule|checkpoint) \w+:)", smk.read_text()):
            m = re.match(r"\s*(?:rule|checkpoint) (\w+):", block)
            if m and re.search(r"^\s+(script|shell|run):", block, re.M):
                env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", block, re.M)
                rules[m.group(1)] = env.group(1) if env else None
                if env:
                    assert (smk.parent / env.group(1)).resolve() == ENV.resolve(), (m.group(1), env.group(1))
    assert len(rules) >= 20 and {"evaluate", "score", "train", "prepare_data", "stats"} <= set(rules)
    assert [r for r, env in rules.items() if env is None] == []
