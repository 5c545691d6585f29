"""Checks that need the model's architecture, run at ``snakemake -n`` before any job starts
(docs/troubleshooting.md): every configured layer index exists, and every LoRA target module names
modules the model has. A week-long queue should not learn about a typo from a job that starts at 3 am.

Where the architecture comes from, in order: the demo model's settings (``demo_model``, built from
scratch, so known before it exists), the model folder's ``config.json`` (``model.source: local``, or the
converted folder once it exists), the Hugging Face cache (``model.source: hub`` after the download),
then ``model.config_json`` (a copy of the model's ``config.json`` shipped with a profile). When none is
available the checks are skipped with a warning that says so, and the jobs check again at load time.

Module names come from instantiating the architecture on PyTorch's ``meta`` device (no weights, no
memory); they are cached under ``.snakemake/mmie/`` by a hash of the architecture, so only the first
dry run pays for the torch import.

The checks run once per workflow run. Snakemake parses the Snakefile again in every job it submits
to a cluster (``python -m snakemake`` on the node) and offers no public way to tell that parse from its
main process; so the process that ran the checks leaves a mark in its environment
(``MMIE_CHECKED``: a digest of the config and the working directory), the jobs it starts inherit it
(SLURM's plugin submits with ``sbatch --export=ALL``), and a parse that finds the mark of its own config
skips the checks (:func:`checked`). Without the mark a job checks again, as before."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from mmie.errors import ConfigError

log = logging.getLogger(__name__)
CACHE = Path(".snakemake") / "mmie"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: the mark of a process that checked a config (see the module doc)
CHECKED_ENV = "MMIE_CHECKED"


def architecture(config: dict, workdir: str | Path = ".") -> tuple[dict | None, str]:
    """(config.json-like dict, where it came from) or (None, why not)."""
    model, workdir = config["model"], Path(workdir)
    source = model["source"]
    if source == "demo":
        d = config["demo_model"]
        return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": d["vocab_size"],
                "hidden_size": d["hidden_size"], "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
                "num_key_value_heads": d["kv_heads"], "intermediate_size": d["intermediate_size"],
                "max_position_embeddings": d["max_position"], "tie_word_embeddings": True}, "demo_model settings"
    candidates = []
    if source == "local" and model.get("path"):
        candidates.append(workdir / model["path"] / "config.json")
    if source == "gemma3-270m":
        candidates.append(workdir / "results" / config["experiment"] / "model" / "config.json")
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8")), str(path)
    if source == "hub" and model.get("id") and model.get("revision"):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model["id"], "config.json", revision=model["revision"])
        except ImportError:
            cached = None
        if isinstance(cached, str) and Path(cached).is_file():
            return json.loads(Path(cached).read_text(encoding="utf-8")), f"HF cache ({cached})"
    if model.get("config_json"):
        # relative to the working directory, else to the workflow (the profiles' shipped copies)
        tried = [workdir / model["config_json"], PROJECT_ROOT / model["config_json"]]
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise ConfigError(f"model.config_json: file not found: {model['config_json']} (looked in "
                              f"{', '.join(str(p.parent) for p in tried)})")
        return json.loads(path.read_text(encoding="utf-8")), str(model["config_json"])
    return None, (f"no config.json for model.source {source!r} yet (not downloaded/converted, and no "
                  "model.config_json)")


def module_names(arch: dict, cache_dir: Path = CACHE) -> list[str]:
    """Names of every module of the architecture (instantiated on the meta device; cached)."""
    key = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_dir / f"modules-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    names = [n for n, _ in model.named_modules() if n]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(names))
    return names


def configured_layers(config: dict) -> dict[str, list[int]]:
    """Config key -> layer indices it names."""
    out = {}
    force = config["layers"].get("force_layers")
    if force:
        out["layers.force_layers"] = [int(x) for x in force]
    cand = config["layers"].get("selection", {}).get("candidates")
    if cand:
        out["layers.selection.candidates"] = [int(x) for x in cand]
    for arm, spec in config["arms"].items():
        if spec.get("layers"):
            out[f"arms.{arm}.layers"] = [int(x) for x in spec["layers"]]
    return out


def check(config: dict, workdir: str | Path = ".", cache_dir: Path | None = None) -> dict:
    """Raise ConfigError naming the key for a layer or LoRA target the model does not have. Returns
    what was checked (for tests and the log)."""
    arch, origin = architecture(config, workdir)
    from mmie.arms import resolve_spec
    from mmie.arms.methods import method

    # the adapter target modules of every method that takes `targets` (lora, rmu), defaults included
    lora = {arm: resolve_spec(spec)["targets"] for arm, spec in config["arms"].items()
            if "targets" in method(spec["method"]).keys}
    layers = configured_layers(config)
    if arch is None:
        if lora or layers:
            log.warning("mmie: layer indices and LoRA targets not checked before the run: %s", origin)
        return {"checked": False, "why": origin}
    n = int(arch.get("num_hidden_layers") or arch.get("text_config", {}).get("num_hidden_layers"))
    for key, idx in layers.items():
        bad = [x for x in idx if not 0 <= x < n]
        if bad:
            raise ConfigError(f"{key}: layers {bad} do not exist; the model ({origin}) has layers 0..{n - 1}")
    if lora:
        names = module_names(arch, cache_dir or Path(workdir) / CACHE)
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        for arm, targets in lora.items():
            missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
            if missing:
                raise ConfigError(f"arms.{arm}.targets: {missing} match no module of the model ({origin}); "
                                  f"module names include {', '.join(leaves)}")
    return {"checked": True, "origin": origin, "layers": n, "lora_targets": lora}


def checked_key(config: dict, workdir: str | Path = ".") -> str:
    """A digest of the (validated) config and the absolute working directory."""
    blob = json.dumps({"workdir": str(Path(workdir).resolve()), "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checked(config: dict, workdir: str | Path = ".") -> bool:
    """Whether the process that started this one (the workflow's main process, for a job's parse of
    the Snakefile) already checked this config in this working directory."""
    return os.environ.get(CHECKED_ENV) == checked_key(config, workdir)


def mark_checked(config: dict, workdir: str | Path = ".") -> None:
    """Leave the mark for the processes this one starts (after the checks passed)."""
    os.environ[CHECKED_ENV] = checked_key(config, workdir)
