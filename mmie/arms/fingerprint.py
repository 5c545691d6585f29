"""The base model's content hash, which SAE checkpoints, activation caches and edit arms are tied to.

It lives with the arms because only the method registry knows which parameters an arm's adapter
adds (each trained method declares their name markers), and those are not the model's."""

from __future__ import annotations

import hashlib

import torch

from mmie.errors import ModelError


def model_fingerprint(model) -> str:
    """A content hash of the model: architecture sizes plus the bytes of a few weight tensors
    (embedding, first and last parameter). The same weights give the same fingerprint whatever
    folder or hub cache they were loaded from; a different model (or a fine-tuned copy) does not."""
    cfg = getattr(model, "config", None)
    h = hashlib.sha256()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        h.update(f"{key}={getattr(cfg, key, None)};".encode())
    # adapter weights are not the model's: each trained method declares how its parameters are named
    from mmie.arms.methods import methods

    markers = {m for declared in methods().values() for m in declared.param_markers}
    params = [p for n, p in model.named_parameters() if not any(m in n.lower() for m in markers)]
    if not params:
        raise ModelError("model has no parameters to fingerprint")
    emb = model.get_input_embeddings().weight
    for t in (emb, params[0], params[-1]):
        flat = t.detach().reshape(-1)[:65536].to("cpu", torch.float32).contiguous()
        h.update(flat.numpy().tobytes())
    return h.hexdigest()[:16]
