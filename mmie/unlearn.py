"""Unlearning objectives and the training loop of the trained arms (METHOD §6).

Forget terms (token-averaged, padding masked): ``ga`` (−NLL), ``npo``
(−(2/β) log σ(−β (log πθ − log πref)), with per-sequence mean token log-probabilities) and
``bounded`` (−B·tanh(NLL/B)). Retain term: KL(p_ref ‖ pθ) per token on retain batches (masked mean)
plus an optional NLL. The reference is the *same* weights with the adapter switched off.

Hygiene: AdamW, linear warm-up then cosine decay, gradient clipping, a NaN/Inf guard that stops the
job naming the step (no checkpoint is written), and early stopping on held-out retain perplexity:
when it leaves ``max_retain_ppl_ratio × base``, training stops and the last state within budget is
kept."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmie.likelihood import right_pad

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/Inf during training."""


class NoStateWithinBudget(RuntimeError):
    """Held-out retain perplexity left its budget before any evaluated training state stayed inside it."""


# ----------------------------------------------------------------------------- tensors
def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the mask of positions that count (both [B, T-1])."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    return tok_lp, valid


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).sum() / valid.sum().clamp(min=1)


def seq_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


def forget_loss(kind: str, tok_lp: torch.Tensor, valid: torch.Tensor, ref_tok_lp: torch.Tensor | None,
                beta: float, bound: float) -> torch.Tensor:
    nll = -masked_mean(tok_lp, valid)
    if kind == "ga":
        return -nll
    if kind == "bounded":
        return -bound * torch.tanh(nll / bound)
    if kind == "npo":
        if ref_tok_lp is None:
            raise ValueError("npo needs reference log-probabilities")
        ratio = seq_mean(tok_lp, valid) - seq_mean(ref_tok_lp, valid)
        return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()
    raise ValueError(f"unknown forget objective {kind!r}")


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-pad positions of KL(p_ref ‖ pθ)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return masked_mean(kl, mask.bool())


# ----------------------------------------------------------------------------- loop
@dataclass
class TrainResult:
    state: dict
    log_rows: list[dict]
    summary: dict


def heldout_nll(model, adapter, seqs: list[list[int]], pad_id: int, device, batch_size: int = 32,
                use_adapter: bool = True) -> float:
    """Token-weighted mean NLL on held-out sequences (inference mode)."""
    total, count = 0.0, 0
    ctx = adapter.active if use_adapter else adapter.reference
    with torch.inference_mode(), ctx():
        for i in range(0, len(seqs), batch_size):
            ids, mask = right_pad(seqs[i:i + batch_size], pad_id, device)
            lp, valid = token_logprobs(model(input_ids=ids, attention_mask=mask).logits, ids, mask)
            total += float(-(lp * valid).sum())
            count += int(valid.sum())
    return total / count


def train(model, adapter, pad_id: int, forget: list[list[int]], retain: list[list[int]],
          heldout_forget: list[list[int]], heldout_retain: list[list[int]], cfg: dict, seed: int,
          desc: str = "unlearn") -> TrainResult:
    """Run the unlearning loop; ``adapter`` provides ``parameters()``, ``active()``, ``reference()``,
    ``state_dict()`` and ``load_state_dict()``."""
    device = next(model.parameters()).device
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the adapter has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, warm = cfg["max_steps"], cfg["warmup_steps"]

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(seed)
    base_retain_ppl = math.exp(heldout_nll(model, adapter, heldout_retain, pad_id, device, use_adapter=False))
    base_forget_nll = heldout_nll(model, adapter, heldout_forget, pad_id, device, use_adapter=False)
    budget = cfg["max_retain_ppl_ratio"] * base_retain_ppl
    rows: list[dict] = [{"step": 0, "retain_ppl": base_retain_ppl, "forget_nll": base_forget_nll}]
    kept: dict | None = None   # the initial state is no result (LoReFT is not even the identity at init)
    stopped = "max_steps"
    tokens = 0
    t0 = time.time()
    bs = cfg["batch_size"]
    for step in tqdm(range(1, steps + 1), desc=desc, mininterval=2.0):
        fb = [forget[i] for i in torch.randint(len(forget), (bs,), generator=gen).tolist()]
        rb = [retain[i] for i in torch.randint(len(retain), (bs,), generator=gen).tolist()]
        f_ids, f_mask = right_pad(fb, pad_id, device)
        r_ids, r_mask = right_pad(rb, pad_id, device)
        with torch.no_grad(), adapter.reference():
            ref_r_logits = model(input_ids=r_ids, attention_mask=r_mask).logits
            ref_f_lp = (token_logprobs(model(input_ids=f_ids, attention_mask=f_mask).logits, f_ids, f_mask)[0]
                        if cfg["objective"] == "npo" else None)
        with adapter.active():
            f_lp, f_valid = token_logprobs(model(input_ids=f_ids, attention_mask=f_mask).logits, f_ids, f_mask)
            r_logits = model(input_ids=r_ids, attention_mask=r_mask).logits
        l_forget = forget_loss(cfg["objective"], f_lp, f_valid, ref_f_lp, cfg["beta"], cfg["bound"])
        l_kl = kl_to_reference(r_logits, ref_r_logits, r_mask)
        r_lp, r_valid = token_logprobs(r_logits, r_ids, r_mask)
        l_rnll = -masked_mean(r_lp, r_valid)
        loss = l_forget + cfg["retain_kl"] * l_kl + cfg["retain_nll"] * l_rnll
        if not torch.isfinite(loss):
            raise NonFiniteError(f"{desc}: non-finite loss at step {step} (forget {l_forget.item()}, "
                                 f"KL {l_kl.item()}, retain NLL {l_rnll.item()}); no checkpoint was written. "
                                 f"Lower the learning rate or use the 'bounded' objective.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        if not torch.isfinite(grad_norm):
            raise NonFiniteError(f"{desc}: non-finite gradient norm at step {step}; no checkpoint was written")
        opt.step()
        sched.step()
        tokens += int(f_mask.sum() + r_mask.sum())
        row = {"step": step, "loss": loss.item(), "forget_loss": l_forget.item(), "retain_kl": l_kl.item(),
               "retain_nll": l_rnll.item(), "lr": sched.get_last_lr()[0], "grad_norm": grad_norm.item()}
        if step % cfg["eval_every"] == 0 or step == steps:
            row["retain_ppl"] = math.exp(heldout_nll(model, adapter, heldout_retain, pad_id, device))
            row["forget_nll"] = heldout_nll(model, adapter, heldout_forget, pad_id, device)
            if row["retain_ppl"] > budget:
                rows.append(row)
                stopped = (f"early stop at step {step}: held-out retain perplexity {row['retain_ppl']:.2f} > "
                           f"{cfg['max_retain_ppl_ratio']} x base {base_retain_ppl:.2f}")
                log.info(stopped)
                break
            kept = {"state": adapter.state_dict(), "step": step}
        rows.append(row)
    seconds = time.time() - t0
    if kept is None:
        raise NoStateWithinBudget(
            f"{desc}: no evaluated training state stayed within the retain budget ({stopped}); no checkpoint was "
            f"written. Lower train.lr, evaluate more often (train.eval_every) or raise train.max_retain_ppl_ratio.")
    adapter.load_state_dict(kept["state"])
    summary = {"kept_step": kept["step"], "stopped": stopped, "steps_run": rows[-1]["step"],
               "base_retain_ppl": base_retain_ppl, "base_forget_nll": base_forget_nll,
               "train_seconds": round(seconds, 2), "tokens": tokens,
               "tokens_per_second": round(tokens / seconds, 1) if seconds else None}
    return TrainResult(state=kept["state"], log_rows=rows, summary=summary)
