"""Portable CPU numerics (mmie/numerics.py): the demo's numbers must not depend on the CPU model."""

import os
import subprocess
import sys

import pytest

from mmie import numerics
from mmie.errors import ConfigError

PROBE = ("import torch, mmie.numerics as n; torch.manual_seed(0); torch.set_num_threads(1); "
         "x = torch.randn(64, 257); w = torch.randn(257, 300); "
         "print(torch.backends.cpu.get_cpu_capability(), float(torch.log_softmax(x @ w, -1).exp().sum(-1).std()).hex()); "
         "print(n.describe({'numerics': {'portable': True}}))")


def _run(env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**base, **env}, timeout=120)


def test_portable_environment_is_applied_and_checked():
    ok = _run(numerics.PORTABLE_ENV)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split()[0] == "AVX2"
    assert "'cpu_capability': 'AVX2'" in ok.stdout
    # the same job started without the variables fails loudly instead of computing other numbers
    bad = _run({})
    assert bad.returncode != 0 and "numerics.portable is true" in bad.stderr


def test_apply_refuses_a_conflicting_user_setting(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX512")
    with pytest.raises(ConfigError, match="MKL_CBWR=AVX512"):
        numerics.apply({"numerics": {"portable": True}})
    monkeypatch.setenv("MKL_CBWR", "avx2")   # the same value in another case is fine
    numerics.apply({"numerics": {"portable": True}})
    assert numerics.environment({"numerics": {"portable": False}}) == {}
