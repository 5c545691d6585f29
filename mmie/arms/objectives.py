"""Unlearning objectives of the trained arms (docs/method.md §6): what a training step minimises.

Forget terms (padding masked):
- ``ga``: −NLL, token-averaged over the batch;
- ``bounded``: −B·tanh(NLL/B), NLL token-averaged;
- ``npo`` as published (Zhang et al. 2024, "Negative Preference Optimization"):
  −(2/β) · mean over sequences of log σ(−β (log πθ(y|x) − log πref(y|x))), where log π(y|x) is the
  *sequence* log-likelihood, the masked SUM of its token log-probabilities;
- ``npo_token_mean``: the same with the per-sequence MEAN of token log-probabilities (a variant,
  not the published objective; its log-ratio does not grow with the sequence length).
Retain term: KL(p_ref ‖ pθ) per token on retain batches (masked mean) plus an optional NLL. The
reference is the *same* weights with the adapter switched off.

Every term of an :class:`Objective` is a sum over a micro-batch divided by a count of the whole batch,
taken from the masks before any forward pass, so that the training loop's memory back-off
(``mmie.arms.unlearn``) can split a batch and still follow the whole batch's gradient."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

import torch
import torch.nn.functional as F

OBJECTIVES = ("ga", "bounded", "npo", "npo_token_mean")
NPO_OBJECTIVES = ("npo", "npo_token_mean")


# ----------------------------------------------------------------------------- tensors
def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the mask of positions that count (both [B, T-1])."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return tok_lp, next_token_valid(mask)


def next_token_valid(mask: torch.Tensor) -> torch.Tensor:
    """The next-token positions that count (both the token and its predecessor are not padding), [B, T-1]."""
    return (mask[:, 1:] * mask[:, :-1]).bool()


def count(valid: torch.Tensor) -> torch.Tensor:
    """The denominator of a masked token mean: the number of valid positions, at least 1."""
    return valid.sum().clamp(min=1)


def masked_mean(values: torch.Tensor, valid: torch.Tensor, total: torch.Tensor | int | None = None) -> torch.Tensor:
    """Sum of the valid values divided by ``total`` (default: their own count). Given the count of a
    whole batch, the shares of its micro-batches add up to the batch's mean."""
    return (values * valid).sum() / (count(valid) if total is None else total)


def seq_sum(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum over the valid positions: the sequence log-likelihood of token log-probabilities."""
    return (values * valid).sum(dim=1)


def seq_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return seq_sum(values, valid) / valid.sum(dim=1).clamp(min=1)


def npo_loss(seq_lp: torch.Tensor, ref_seq_lp: torch.Tensor, beta: float, n_seqs: int | None = None) -> torch.Tensor:
    """−(2/β) · mean over sequences of log σ(−β (log πθ − log πref)), from per-sequence log-likelihoods;
    with ``n_seqs`` (the whole batch's sequence count) the share of these sequences in that mean."""
    terms = F.logsigmoid(-beta * (seq_lp - ref_seq_lp))
    return -(2.0 / beta) * (terms.mean() if n_seqs is None else terms.sum() / n_seqs)


def forget_share(kind: str, tok_lp: torch.Tensor, valid: torch.Tensor, ref_tok_lp: torch.Tensor | None,
                 beta: float, tokens: torch.Tensor | int, seqs: int) -> torch.Tensor:
    """The batch-additive part of a forget objective for one micro-batch, divided by the whole batch's
    valid-token count ``tokens`` or sequence count ``seqs``: the mean log-probability for ``ga`` and
    ``bounded`` (which applies :func:`bounded_outer` to the batch's total), the NPO loss otherwise."""
    if kind in ("ga", "bounded"):
        return masked_mean(tok_lp, valid, tokens)
    if kind in NPO_OBJECTIVES:
        if ref_tok_lp is None:
            raise ValueError(f"{kind} needs reference log-probabilities")
        per_seq = seq_sum if kind == "npo" else seq_mean
        return npo_loss(per_seq(tok_lp, valid), per_seq(ref_tok_lp, valid), beta, seqs)
    raise ValueError(f"unknown forget objective {kind!r}; one of {', '.join(OBJECTIVES)}")


def bounded_outer(mean_lp: torch.Tensor, bound: float) -> torch.Tensor:
    """``bounded``: −B·tanh(NLL/B) of the batch's mean log-probability (NLL = −mean log-probability)."""
    return -bound * torch.tanh(-mean_lp / bound)


def forget_loss(kind: str, tok_lp: torch.Tensor, valid: torch.Tensor, ref_tok_lp: torch.Tensor | None,
                beta: float, bound: float) -> torch.Tensor:
    """The forget loss of one whole batch."""
    share = forget_share(kind, tok_lp, valid, ref_tok_lp, beta, count(valid), valid.shape[0])
    return bounded_outer(share, bound) if kind == "bounded" else share


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor,
                    total: torch.Tensor | int | None = None) -> torch.Tensor:
    """Mean over non-pad positions of KL(p_ref ‖ pθ) (with ``total``: the sum divided by it)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return masked_mean(kl, mask.bool(), total)


# ----------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class Term:
    """One named term of an objective; the step's loss is the sum of ``weight × outer(value)`` over
    the terms. ``value`` adds up over micro-batches (each micro-batch returns its share, already
    divided by whole-batch totals); ``outer`` (None: the identity) is a non-linear function of the
    whole batch's value, such as ``bounded``'s −B·tanh."""
    weight: float
    outer: Callable[[torch.Tensor], torch.Tensor] | None = None


class Objective:
    """What a training step minimises, written so that a batch split into micro-batches (the memory
    back-off) gives the gradient of the whole batch. A new objective (e.g. RMU) subclasses this:

    - ``spec``: the terms, in order, by name (the names are train_log.csv columns);
    - ``totals(forget_mask, retain_mask)``: the whole batch's denominators (token and sequence
      counts), taken from the masks before any forward pass;
    - ``terms(model, adapter, forget_ids, forget_mask, retain_ids, retain_mask, totals)``: the
      value of every term on one micro-batch (its rows of both batches), each a sum over the
      micro-batch divided by the whole batch's total, so that micro-batches add up to the batch.
      It runs its own forward passes (the frozen reference under ``adapter.reference()``).

    - ``record``: what the checkpoint's manifest keeps of a method's own objective (under
      ``objective``: its settings, e.g. RMU's layer and coefficient); empty by default.

    The training loop does the splitting, backward passes, gradient accumulation, logging, the
    NaN guard and clipping."""

    spec: dict[str, Term]
    record: Mapping[str, Any] = MappingProxyType({})

    def totals(self, forget_mask: torch.Tensor, retain_mask: torch.Tensor) -> dict:
        raise NotImplementedError

    def terms(self, model, adapter, forget_ids: torch.Tensor, forget_mask: torch.Tensor, retain_ids: torch.Tensor,
              retain_mask: torch.Tensor, totals: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ForgetRetainObjective(Objective):
    """``ga``, ``bounded``, ``npo``, ``npo_token_mean`` on the forget batch (``forget_loss``), plus
    KL(p_ref ‖ pθ) (``retain_kl``) and NLL (``retain_nll``) on the retain batch, weighted by
    ``train.retain_kl`` and ``train.retain_nll`` (see the module doc)."""

    def __init__(self, cfg: dict) -> None:
        self.kind, self.beta, bound = cfg["objective"], cfg["beta"], cfg["bound"]
        outer = (lambda mean_lp: bounded_outer(mean_lp, bound)) if self.kind == "bounded" else None
        self.spec = {"forget_loss": Term(1.0, outer), "retain_kl": Term(cfg["retain_kl"]),
                     "retain_nll": Term(cfg["retain_nll"])}

    def totals(self, forget_mask, retain_mask):
        return {"forget_tokens": count(next_token_valid(forget_mask)), "forget_seqs": forget_mask.shape[0],
                "retain_positions": count(retain_mask.bool()), "retain_tokens": count(next_token_valid(retain_mask))}

    def terms(self, model, adapter, forget_ids, forget_mask, retain_ids, retain_mask, totals):
        # the order of the forward passes is that of the code before micro-batches (dropout draws alike)
        with torch.no_grad(), adapter.reference():
            ref_r_logits = model(input_ids=retain_ids, attention_mask=retain_mask).logits
            ref_f_lp = (token_logprobs(model(input_ids=forget_ids, attention_mask=forget_mask).logits, forget_ids,
                                       forget_mask)[0] if self.kind in NPO_OBJECTIVES else None)
        with adapter.active():
            f_lp, f_valid = token_logprobs(model(input_ids=forget_ids, attention_mask=forget_mask).logits,
                                           forget_ids, forget_mask)
            r_logits = model(input_ids=retain_ids, attention_mask=retain_mask).logits
        forget = forget_share(self.kind, f_lp, f_valid, ref_f_lp, self.beta, totals["forget_tokens"],
                              totals["forget_seqs"])
        kl = kl_to_reference(r_logits, ref_r_logits, retain_mask, totals["retain_positions"])
        r_lp, r_valid = token_logprobs(r_logits, retain_ids, retain_mask)
        return {"forget_loss": forget, "retain_kl": kl,
                "retain_nll": -masked_mean(r_lp, r_valid, totals["retain_tokens"])}


def make_objective(cfg: dict) -> Objective:
    """The objective named by ``train.objective``."""
    if cfg["objective"] in OBJECTIVES:
        return ForgetRetainObjective(cfg)
    raise ValueError(f"unknown train.objective {cfg['objective']!r}; one of {', '.join(OBJECTIVES)}")
