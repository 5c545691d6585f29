"""Portable CPU numerics (docs/method.md §10).

Float results of the same code differ between x86-64 CPUs: PyTorch dispatches its vectorised kernels
(softmax, exp, reductions) to the widest instruction set the CPU has (AVX-512 on one machine, AVX2 on
the next), and MKL picks its GEMM code path the same way. On the demo's tiny model those last-bit
differences were amplified by training and by choices (layer selection) into different conclusions.

With ``numerics.portable: true`` (the demo's setting) every job runs with

- ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's CPU kernels use their AVX2 versions on every CPU;
- ``MKL_CBWR=AVX2``: MKL's conditional numerical reproducibility, one code path on every CPU
  that has AVX2;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: the same for oneDNN kernels;

and a fixed number of torch threads (``resources.torch_threads``), since reductions split over
threads sum in a different order. The variables must be in the environment *before* torch is
imported, so the workflow sets them when it reads the config (every job inherits them), and each
job checks, when it records its provenance, that torch really runs with them — a job started some
other way fails loudly instead of computing numbers that differ from the documented ones.

Light: importing this module does not import torch."""

from __future__ import annotations

import os
import sys

from mmie.errors import ConfigError

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def portable(config: dict) -> bool:
    return bool(config.get("numerics", {}).get("portable", False))


def environment(config: dict) -> dict[str, str]:
    """The variables a job of this config must start with (empty unless numerics are portable)."""
    return dict(PORTABLE_ENV) if portable(config) else {}


def apply(config: dict) -> None:
    """Put the variables into this process's environment (for the jobs it starts). Called by the
    workflow before any job runs; an explicit different value set by the user is an error."""
    for key, value in environment(config).items():
        current = os.environ.get(key)
        if current is not None and current.upper() != value.upper():
            raise ConfigError(f"numerics.portable is true but the environment sets {key}={current} "
                              f"(portable numerics need {key}={value}); unset it or set numerics.portable: false")
        os.environ[key] = value


def describe(config: dict) -> dict:
    """What the running job's numerics are, for provenance; raises when the config asks for portable
    numerics and torch (already imported by this job) does not run with them."""
    info: dict = {"portable": portable(config), **{k: os.environ.get(k) for k in PORTABLE_ENV}}
    torch = sys.modules.get("torch")
    if torch is None:
        return info
    capability = torch.backends.cpu.get_cpu_capability()
    info.update(cpu_capability=capability, torch_threads=torch.get_num_threads())
    if portable(config):
        wrong = {k: os.environ.get(k) for k, v in PORTABLE_ENV.items() if (os.environ.get(k) or "").upper() != v.upper()}
        if wrong or capability.upper() != "AVX2":
            raise ConfigError(
                f"numerics.portable is true but this job runs with CPU capability {capability} and {wrong or 'the right variables'} "
                f"(needs {PORTABLE_ENV} in the environment before torch is imported). Run the job through "
                "snakemake (the workflow sets them), export them yourself, or set numerics.portable: false.")
    return info
