"""Per-item log-likelihoods under the model (METHOD §5): the building block of perplexity, of the
fluency of outputs under the base model, and (later) of KL and MIA scores.

Every pass runs under ``torch.inference_mode()``; padding is masked; each item returns the *sum* of
the negative log-likelihood of its target tokens and their count, so perplexity is token-weighted:
``exp(Σ NLL / Σ tokens)``."""

from __future__ import annotations

import math

from tqdm import tqdm


def score_sequences(model, pad_id: int, contexts: list[list[int]], targets: list[list[int]], *,
                    batch_size: int = 16, max_length: int = 256, desc: str = "score") -> list[dict]:
    """NLL of ``targets[i]`` given ``contexts[i]`` (token ids). With an empty context the first target
    token has nothing to condition on and is not scored. Returns {nll, tokens, truncated} per item.

    Sequences longer than ``max_length`` are cut at the end (counted as ``truncated``)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    rows = []
    for ctx, tgt in zip(contexts, targets, strict=True):
        seq = list(ctx) + list(tgt)
        truncated = len(seq) > max_length
        seq = seq[:max_length]
        # labels: -100 for context positions (and the very first token, which has no context)
        labels = [-100] * min(len(ctx), len(seq)) + seq[len(ctx):]
        if not ctx and labels:
            labels[0] = -100
        rows.append((seq, labels, truncated))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out: dict[int, dict] = {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", mininterval=2.0):
            idx = order[start:start + batch_size]
            width = max(1, max(len(rows[i][0]) for i in idx))
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            lab = torch.full((len(idx), width), -100, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                seq, labels, _ = rows[i]
                if seq:
                    ids[r, :len(seq)] = torch.tensor(seq)
                    lab[r, :len(seq)] = torch.tensor(labels)
                    mask[r, :len(seq)] = 1
            ids, lab, mask = ids.to(device), lab.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shift_logits = logits[:, :-1]
            shift_labels = lab[:, 1:]
            nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                  ignore_index=-100, reduction="none").view(shift_labels.shape)
            valid = shift_labels != -100
            sums = (nll * valid).sum(dim=1).tolist()
            counts = valid.sum(dim=1).tolist()
            for r, i in enumerate(idx):
                if counts[r] and not math.isfinite(sums[r]):
                    raise FloatingPointError(f"{desc}: non-finite NLL for item {i}")
                out[i] = {"nll": float(sums[r]), "tokens": int(counts[r]), "truncated": rows[i][2]}
    return [out[i] for i in range(len(rows))]


def perplexity(nll_sum: float, tokens: int) -> float:
    if tokens <= 0:
        raise ValueError("perplexity of zero tokens is undefined")
    return math.exp(nll_sum / tokens)
