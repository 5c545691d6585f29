"""Per-item log-likelihoods under the model (docs/method.md §5): the building block of perplexity, of the
fluency of outputs under the base model, and (later) of KL and MIA scores.

Every pass runs under ``torch.inference_mode()``; padding is masked; each item returns the *sum* of
the negative log-likelihood of its target tokens and their count, so perplexity is token-weighted:
``exp(Σ NLL / Σ tokens)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mmie.model.memory import in_batches


def score_sequences(model, pad_id: int, contexts: list[list[int]], targets: list[list[int]], *,
                    batch_size: int = 16, max_length: int = 256, desc: str = "score",
                    oom_log: list | None = None) -> list[dict]:
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

    def run(start: int, stop: int) -> None:
        idx = order[start:stop]
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

    with torch.inference_mode():
        in_batches(len(order), batch_size, run, desc=desc, oom_log=oom_log,
                   hint="lower eval.score_batch_size or eval.max_length")
    return [out[i] for i in range(len(rows))]


def perplexity(nll_sum: float, tokens: int) -> float:
    if tokens <= 0:
        raise ValueError("perplexity of zero tokens is undefined")
    return math.exp(nll_sum / tokens)


def right_pad(seqs: list[list[int]], pad_id: int, device):
    """Right-padded ids and attention mask of a batch of token-id lists (empty lists allowed)."""
    import torch

    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
    return ids.to(device), mask.to(device)


def kl_items(model, arm, pad_id: int, arm_context: list[int], targets: list[list[int]], *, batch_size: int = 16,
             max_length: int = 256, desc: str = "token KL", base_context: Sequence[int] = (),
             oom_log: list | None = None) -> list[dict]:
    """Per item: Σ over the target's predicted tokens of KL(p_base ‖ p_arm) and the token count.

    The base distribution is the model outside the arm's ``active()`` (the base model) with
    ``base_context`` (the tokenizer's special prefix) in front of the text; the arm's is the model
    inside ``active()`` (the arm on, once) with ``arm_context`` (that prefix plus the arm's
    instruction, if any) in front of it. Call it outside ``arm.active()``: inside, the reference
    pass would run with the arm on (``arm.reference()`` raises there)."""
    import torch

    device = next(model.parameters()).device
    targets = [t[:max(2, max_length - len(arm_context))] for t in targets]
    out: dict[int, dict] = {}

    def run(start: int, stop: int) -> None:
        batch = targets[start:stop]
        b = len(base_context)
        ids, mask = right_pad([list(base_context) + t for t in batch], pad_id, device)
        with arm.reference():
            ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        ctx_ids, ctx_mask = right_pad([list(arm_context) + t for t in batch], pad_id, device)
        with arm.active():
            cur = torch.log_softmax(model(input_ids=ctx_ids, attention_mask=ctx_mask).logits.float(), dim=-1)
        c = len(arm_context)
        for r, t in enumerate(batch):
            n = len(t) - 1  # positions that predict t[1:]
            if n <= 0:
                out[start + r] = {"kl": 0.0, "tokens": 0}
                continue
            p_ref = ref[r, b:b + n]
            p_cur = cur[r, c:c + n]
            kl = (p_ref.exp() * (p_ref - p_cur)).sum(-1).clamp(min=0).sum()
            if not torch.isfinite(kl):
                raise FloatingPointError(f"{desc}: non-finite KL for item {start + r}")
            out[start + r] = {"kl": float(kl), "tokens": n}

    with torch.inference_mode():
        in_batches(len(targets), batch_size, run, desc=desc, oom_log=oom_log,
                   hint="lower eval.score_batch_size or eval.max_length")
    return [out[i] for i in range(len(targets))]


def arm_contexts(arm, tokenizer) -> tuple[list[int], list[int]]:
    """What the base and the arm condition a reference text on: the tokenizer's special prefix, and
    that prefix plus the arm's instruction and a newline (the prompt arm; nothing for other arms)."""
    from mmie.model.generation import special_prefix

    prefix = special_prefix(tokenizer)
    instruction = tokenizer(arm.system + "\n", add_special_tokens=False)["input_ids"] if arm.system else []
    return prefix, prefix + instruction


def reference_nll(arm, tokenizer, texts: list[str], *, batch_size: int = 16, max_length: int = 256,
                  desc: str = "reference NLL", oom_log: list | None = None) -> list[dict]:
    """Each reference text's NLL and token count under the arm (call inside ``arm.active()``), after
    the arm's context (``arm_contexts``): retain perplexity in ``evaluate`` and in the quantization
    attack."""
    _, arm_ctx = arm_contexts(arm, tokenizer)
    return score_sequences(arm.model, tokenizer.pad_token_id, [arm_ctx] * len(texts),
                           [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
                           batch_size=batch_size, max_length=max_length, desc=desc, oom_log=oom_log)


def token_kl(arm, tokenizer, texts: list[str], *, batch_size: int = 16, max_length: int = 256,
             desc: str = "token KL", oom_log: list | None = None) -> list[dict]:
    """``evaluate``'s token KL(base ‖ arm) of reference texts (see ``kl_items``), per text."""
    base_ctx, arm_ctx = arm_contexts(arm, tokenizer)
    return kl_items(arm.model, arm, tokenizer.pad_token_id, arm_ctx,
                    [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
                    batch_size=batch_size, max_length=max_length, desc=desc, base_context=base_ctx,
                    oom_log=oom_log)


MIA_CHUNK = 32   # positions per full-vocabulary step of the Min-K%++ statistics


def mia_scores(model, pad_id: int, seqs: list[list[int]], *, k: float = 0.2, batch_size: int = 16,
               desc: str = "MIA", oom_log: list | None = None, chunk: int = MIA_CHUNK) -> list[dict]:
    """Per sequence: the loss score (−mean NLL) and the Min-K%++ score (mean of the lowest ``k``
    fraction of per-token (log p(x_t) − μ_t)/σ_t, with μ_t, σ_t the mean and standard deviation of
    log p under the model's next-token distribution). Higher = more member-like.

    The statistics are computed ``chunk`` positions at a time, so besides the model's logits only one
    chunk's full-vocabulary tensors exist at once (at 151,936 tokens of vocabulary they are the
    memory that matters)."""
    import torch

    device = next(model.parameters()).device
    out: dict[int, dict] = {}

    def run(start: int, stop: int) -> None:
        batch = seqs[start:stop]
        ids, mask = right_pad(batch, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        width = logits.shape[1] - 1
        tok = torch.empty(len(batch), width, device=logits.device)
        z = torch.empty(len(batch), width, device=logits.device)
        for t0 in range(0, width, chunk):
            t1 = min(width, t0 + chunk)
            logp = torch.log_softmax(logits[:, t0:t1].float(), dim=-1)
            tok[:, t0:t1] = logp.gather(-1, ids[:, t0 + 1:t1 + 1].unsqueeze(-1)).squeeze(-1)
            p = logp.exp()
            mu = (p * logp).sum(-1)
            sigma = ((p * logp.pow(2)).sum(-1) - mu.pow(2)).clamp(min=1e-12).sqrt()
            z[:, t0:t1] = (tok[:, t0:t1] - mu) / sigma
            del logp, p
        for r, s in enumerate(batch):
            n = len(s) - 1
            if n <= 0:
                raise ValueError(f"{desc}: sequence {start + r} is too short for a membership score")
            zr, tr = z[r, :n], tok[r, :n]
            kk = max(1, int(round(k * n)))
            out[start + r] = {"loss_score": float(tr.mean()), "mink_pp": float(zr.sort().values[:kk].mean())}

    with torch.inference_mode():
        in_batches(len(seqs), batch_size, run, desc=desc, oom_log=oom_log,
                   hint="lower eval.score_batch_size or eval.mia_max_items")
    return [out[i] for i in range(len(seqs))]
