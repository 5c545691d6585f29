"""Loading a causal LM (docs/method.md §2): explicit dtype, attention backend with a real fallback chain
(flash_attention_2 → sdpa → eager, on the actual load failure), optional bitsandbytes quantization,
one device by default. What was used is returned and recorded, never guessed."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmie.errors import ConfigError, ModelError

log = logging.getLogger(__name__)
ATTENTION_CHAIN = ("flash_attention_2", "sdpa", "eager")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    runtime: dict = field(default_factory=dict)  # dtype, attention, quantization, device, source


def model_source(model_cfg: dict, demo_dir: str | None) -> dict:
    """Where the weights come from: the demo folder, a local folder, or a hub id + pinned revision."""
    src = model_cfg["source"]
    if src in ("demo", "gemma3-270m"):
        if not demo_dir:
            raise ConfigError(f"model.source is {src!r} but no model folder was given")
        return {"path": str(demo_dir), "revision": None, "local_files_only": True}
    if src == "local":
        path = Path(model_cfg["path"])
        if not (path / "config.json").is_file():
            raise ModelError(f"model.path {path} is not a Hugging Face model folder (no config.json)")
        return {"path": str(path), "revision": None, "local_files_only": True}
    if src == "hub":
        if not model_cfg.get("revision"):
            raise ConfigError(f"model.id {model_cfg.get('id')!r} needs a pinned model.revision (a commit hash)")
        return {"path": model_cfg["id"], "revision": model_cfg["revision"],
                "local_files_only": bool(model_cfg.get("offline", True))}
    raise ConfigError(f"unknown model.source {src!r}")


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"model.device is {requested!r} but CUDA is not available on this machine")
    return requested


def setup_job(rule: str, threads: int, resources, config: dict, requested: str = "auto",
              runs_on: str | None = None) -> str:
    """Start of every torch job: torch uses the threads Snakemake gave the job, and a job that requests
    a GPU (resources gpu=1) and finds none fails unless ``resources.allow_cpu`` is true. Returns the
    device, recorded in the provenance of everything the job writes (``runs_on``: the device of a job
    that computes on a fixed one, e.g. the demo model's training on the CPU)."""
    import torch

    from mmie import provenance

    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(requested)
    gpu_requested = int(resources.get("gpu", 0) or 0) > 0
    if gpu_requested and device == "cpu" and not config["resources"]["allow_cpu"]:
        import os

        why = ("torch finds no CUDA device (torch.cuda.is_available() is False, CUDA_VISIBLE_DEVICES="
               f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})" if not torch.cuda.is_available()
               else f"the config asks for device {requested!r}")
        raise ModelError(f"rule {rule} requests a GPU (resources gpu=1) but would run on the CPU: {why}. Run it on a "
                         f"GPU node (in a container: --sdm apptainer --apptainer-args \"--nv\"; on SLURM: "
                         f"--profile profiles/slurm), or set resources.allow_cpu: true in the config to run it on "
                         f"the CPU on purpose (the demo does)")
    device = runs_on or device
    provenance.record_device(device)
    log.info("rule %s on %s with %d torch threads", rule, device, torch.get_num_threads())
    return device


def resolve_dtype(requested: str, device: str):
    import torch

    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    except KeyError as err:
        raise ConfigError(f"model.dtype {requested!r} is not one of auto, float32, bfloat16, float16") from err


def attention_candidates(requested: str, device: str) -> list[str]:
    """The chain to try. flash_attention_2 only on CUDA and only when the package imports."""
    if requested != "auto":
        if requested not in ATTENTION_CHAIN:
            raise ConfigError(f"model.attn_implementation {requested!r} is not one of auto, {', '.join(ATTENTION_CHAIN)}")
        return list(ATTENTION_CHAIN[ATTENTION_CHAIN.index(requested):])
    chain = list(ATTENTION_CHAIN)
    if not device.startswith("cuda") or importlib.util.find_spec("flash_attn") is None:
        chain.remove("flash_attention_2")
    return chain


def quantization_config(kind: str, dtype):
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
    raise ConfigError(f"model.quantization {kind!r} is not one of none, 8bit, 4bit")


def _tokenizer_json_mismatch(tok, path: Path) -> list[str]:
    """Parts of the saved tokenizer.json that the loaded tokenizer does not reproduce."""
    import json

    saved = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    loaded = json.loads(tok.backend_tokenizer.to_str())
    return [k for k in ("normalizer", "pre_tokenizer", "model") if saved.get(k) != loaded.get(k)]


def load_tokenizer(src: dict, padding_side: str = "left"):
    """AutoTokenizer, checked against the folder's own tokenizer.json when there is one.

    transformers 5 maps a model type to a tokenizer class that may rebuild the pre-tokenizer from
    its own defaults (a from-scratch Qwen2 folder comes back as Qwen2Tokenizer with Qwen's split
    regex): the model would then see different tokens from those it was trained on. The saved
    tokenizer.json is the ground truth; when the loaded tokenizer differs from it, the file is loaded
    as it is and the fact is recorded in ``tok.mmie_fidelity``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(src["path"], revision=src["revision"],
                                        local_files_only=src["local_files_only"])
    fidelity = {"class": type(tok).__name__, "reloaded_from_tokenizer_json": False}
    local = Path(src["path"])
    if local.is_dir() and (local / "tokenizer.json").is_file() and getattr(tok, "backend_tokenizer", None):
        differs = _tokenizer_json_mismatch(tok, local)
        if differs:
            log.warning("%s changed %s of %s/tokenizer.json; loading the file as saved", type(tok).__name__,
                        differs, local)
            tok = PreTrainedTokenizerFast.from_pretrained(str(local), local_files_only=True)
            still = _tokenizer_json_mismatch(tok, local)
            if still:
                raise ModelError(f"cannot load {local}/tokenizer.json faithfully: {still} differ after reload")
            fidelity.update(reloaded_from_tokenizer_json=True, auto_class_changed=differs)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of {src['path']} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.mmie_fidelity = fidelity
    return tok


def load_model(model_cfg: dict, demo_dir: str | None = None) -> LoadedModel:
    """Load model + tokenizer once; the caller keeps them for the whole job."""
    from transformers import AutoModelForCausalLM

    from mmie import provenance

    src = model_source(model_cfg, demo_dir)
    device = resolve_device(model_cfg["device"])
    provenance.record_device(device)
    dtype = resolve_dtype(model_cfg["dtype"], device)
    quant = quantization_config(model_cfg["quantization"], dtype)
    device_map = model_cfg.get("device_map")
    attempts: list[dict] = []
    model = None
    for attn in attention_candidates(model_cfg["attn_implementation"], device):
        try:
            model = AutoModelForCausalLM.from_pretrained(
                src["path"], revision=src["revision"], local_files_only=src["local_files_only"],
                dtype=dtype, attn_implementation=attn, quantization_config=quant,
                device_map=device_map)
        except (ImportError, ValueError, RuntimeError, OSError) as err:
            # The actual load failure decides the fallback; it is logged and recorded.
            log.warning("attention backend %s failed to load: %s", attn, err)
            attempts.append({"attn_implementation": attn, "error": f"{type(err).__name__}: {err}"[:500]})
            continue
        attempts.append({"attn_implementation": attn, "error": None})
        break
    if model is None:
        raise ModelError(f"could not load {src['path']} with any attention backend: {attempts}")
    if device_map is None and quant is None:
        model.to(device)  # type: ignore[arg-type]  # transformers wraps PreTrainedModel.to with functools.wraps: mypy loses `self`
    model.eval()
    used = getattr(model.config, "_attn_implementation", None) or attempts[-1]["attn_implementation"]
    tok = load_tokenizer(src)
    runtime = {"model": src["path"], "revision": src["revision"], "device": device,
               "dtype": str(dtype).replace("torch.", ""), "attn_implementation": used,
               "attention_attempts": attempts, "quantization": model_cfg["quantization"],
               "device_map": device_map, "tokenizer": tok.mmie_fidelity, "n_parameters": sum(p.numel() for p in model.parameters())}
    log.info("loaded %s: %s", src["path"], runtime)
    return LoadedModel(model=model, tokenizer=tok, runtime=runtime)
