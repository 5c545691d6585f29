"""Unlearning objectives and the training loop of the trained arms (docs/method.md §6).

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

Hygiene: AdamW, linear warm-up then cosine decay, gradient clipping, a NaN/Inf guard that stops the
job naming the step (no checkpoint is written), and early stopping on held-out retain perplexity:
when it leaves ``max_retain_ppl_ratio × base`` (or is not a finite number), training stops and the
last state within budget is kept.

Resume: with a :class:`ResumeStore`, every ``eval_every`` steps the whole training state (adapter
tensors, optimizer, scheduler, RNG states, step, best-so-far state, log rows) replaces one file
atomically; a rerun with the same identity key continues from it and ends with the same adapter,
bit for bit, as an uninterrupted run.

Memory back-off (mmie.model.memory): a step whose forward/backward runs out of memory is redone in
micro-batches (rows of both batches) of half the size, down to 1, accumulating the gradient of the
whole batch: every term of the loss (:class:`Objective`) is a sum over a micro-batch divided by a
count of the whole batch, taken from the masks before any forward pass. The size that worked stays
for the rest of the run (and across a resume); every halving, and those of the held-out NLL passes,
is recorded in the summary's ``oom_retries``. Without an out-of-memory error the whole batch is one
micro-batch and the computation is that of the loop before the back-off, bit for bit."""

from __future__ import annotations

import logging
import math
import pickle
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmie import io
from mmie.model.likelihood import right_pad
from mmie.model.memory import in_batches, is_oom

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/Inf during training."""


class NoStateWithinBudget(RuntimeError):
    """Held-out retain perplexity left its budget before any evaluated training state stayed inside it."""


class ResumeError(RuntimeError):
    """A resume state exists but cannot be used."""


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


def _combine(objective: Objective, parts: dict[str, torch.Tensor], names=None) -> torch.Tensor:
    """Σ weight × part over the terms (all, or ``names``), in the objective's order."""
    loss = None
    for name in objective.spec if names is None else names:
        part = objective.spec[name].weight * parts[name]
        loss = part if loss is None else loss + part
    return loss


def _rows(ids: torch.Tensor, mask: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a right-padded batch, without the columns that are padding in all of them."""
    ids, mask = ids[rows], mask[rows]
    width = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
    return ids[:, :width], mask[:, :width]


def step_gradients(objective: Objective, model, adapter, params: list[torch.Tensor], forget_ids: torch.Tensor,
                   forget_mask: torch.Tensor, retain_ids: torch.Tensor, retain_mask: torch.Tensor, micro: int,
                   desc: str, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Accumulate into ``params``' ``.grad`` (zeroed before) the gradient of one step's loss, running
    the batch in micro-batches of ``micro`` rows of both batches; returns the loss and its terms
    (after ``outer``). Raises :class:`NonFiniteError` naming the step if a term is not finite.

    A term with an ``outer`` (``bounded``: −B·tanh(mean NLL / B) is non-linear in the batch mean)
    cannot add micro-batch losses. Its gradient is outer'(V)·Σᵢ ∂vᵢ/∂θ, V = Σᵢ vᵢ the whole batch's
    value: each micro-batch's ∂vᵢ/∂θ is accumulated apart (``torch.autograd.grad``, no extra forward
    pass), and once V is known it is scaled by outer'(V) and added. Exact up to float summation
    order. With the whole batch as one micro-batch the loss is one graph, as before the back-off."""
    totals = objective.totals(forget_mask, retain_mask)
    n = forget_ids.shape[0]
    if retain_ids.shape[0] != n:
        raise ValueError(f"{desc}: step {step}: the forget and retain batches differ in size ({n} vs {retain_ids.shape[0]})")

    def check(parts: dict[str, torch.Tensor], context: str, loss: torch.Tensor | None = None) -> None:
        if not all(torch.isfinite(v).all() for v in parts.values()) or (loss is not None and not torch.isfinite(loss)):
            values = ", ".join(f"{k} {v.item()}" for k, v in parts.items())
            raise NonFiniteError(f"{desc}: non-finite loss at step {step}{context} ({values}); no checkpoint was "
                                 f"written. Lower the learning rate or use the 'bounded' objective.")

    if micro >= n:
        values = objective.terms(model, adapter, forget_ids, forget_mask, retain_ids, retain_mask, totals)
        parts = {k: term.outer(values[k]) if term.outer else values[k] for k, term in objective.spec.items()}
        loss = _combine(objective, parts)
        check(parts, "", loss)
        loss.backward()
        return loss.detach(), {k: v.detach() for k, v in parts.items()}
    outer = {k: t for k, t in objective.spec.items() if t.outer is not None}
    sums: dict[str, torch.Tensor] = {}
    inner_grads: dict[str, list] = {k: [None] * len(params) for k in outer}
    for start in range(0, n, micro):
        rows = slice(start, min(n, start + micro))
        values = objective.terms(model, adapter, *_rows(forget_ids, forget_mask, rows),
                                 *_rows(retain_ids, retain_mask, rows), totals)
        check(values, f" in micro-batch rows {rows.start}-{rows.stop - 1} of {n}")
        for k in outer:
            grads = torch.autograd.grad(values[k], params, retain_graph=True, allow_unused=True)
            inner_grads[k] = [a if b is None else b if a is None else a + b
                              for a, b in zip(inner_grads[k], grads, strict=True)]
        linear = [k for k in objective.spec if k not in outer]
        if linear:
            _combine(objective, values, linear).backward()
        for k, v in values.items():
            sums[k] = v.detach() if k not in sums else sums[k] + v.detach()
        del values   # this micro-batch's graph goes before the next one's forward pass
    for k, term in outer.items():
        at = sums[k].clone().requires_grad_(True)
        (slope,) = torch.autograd.grad(term.outer(at), at)
        for p, g in zip(params, inner_grads[k], strict=True):
            if g is not None:
                scaled = term.weight * slope * g
                p.grad = scaled if p.grad is None else p.grad + scaled
    parts = {k: term.outer(sums[k]) if term.outer else sums[k] for k, term in objective.spec.items()}
    loss = _combine(objective, parts)
    check(parts, "", loss)
    return loss, parts


# ----------------------------------------------------------------------------- resume
RESUME_FORMAT = 1
RESUME_FILE = "state.pt"


def rng_states() -> dict:
    """Python, NumPy and torch (CPU and CUDA) global RNG states, in types ``torch.load(weights_only=True)`` reads."""
    import numpy as np

    np_state = np.random.get_state(legacy=False)
    return {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": {"bit_generator": np_state["bit_generator"],
                      "key": torch.from_numpy(np_state["state"]["key"].astype("int64")),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    import numpy as np

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = states["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"],
                         "state": {"key": npst["key"].numpy().astype("uint32"), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        if not torch.cuda.is_available() or len(states["cuda"]) != torch.cuda.device_count():
            raise ResumeError("the resume state was written with a different set of CUDA devices; delete the "
                              "resume folder to start this run from scratch")
        torch.cuda.set_rng_state_all(states["cuda"])


def sweep_unfinished_writes(directory: str | Path) -> list[Path]:
    """Remove temporary resume-state files whose write a kill interrupted; returns what was removed."""
    directory = Path(directory)
    stale = sorted(directory.glob(f".{RESUME_FILE}.*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink()
        log.warning("removed %s, an unfinished resume-state write of a killed run", path)
    return stale


class ResumeStore:
    """The resumable state of one training run: ``<directory>/state.pt``, replaced atomically
    (temporary file + rename, mmie.io) every ``eval_every`` steps. ``key`` identifies the run (arm,
    seed, settings, model, data); a state with another key is never loaded."""

    def __init__(self, directory: str | Path, key: str) -> None:
        self.dir = Path(directory)
        self.key = key

    @property
    def path(self) -> Path:
        return self.dir / RESUME_FILE

    def load(self) -> dict | None:
        """The saved state when it belongs to this run, else None (a state of another run is logged and ignored)."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
            raise ResumeError(f"the resume state {self.path} cannot be read ({err}); delete {self.dir} to start "
                              f"this run from scratch") from err
        if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT or payload.get("key") != self.key:
            found = payload.get("key") if isinstance(payload, dict) else type(payload).__name__
            log.warning("ignoring the resume state %s: it belongs to another run (key %s, this run %s: the arm, "
                        "seed, settings, model or data changed); training starts from step 0 and overwrites it",
                        self.path, found, self.key)
            return None
        return payload

    def save(self, payload: dict) -> None:
        with io.atomic_path(self.path) as tmp:
            torch.save({**payload, "format": RESUME_FORMAT, "key": self.key}, tmp)
        log.debug("saved the resumable state after step %s to %s", payload.get("step"), self.path)

    def clear(self) -> None:
        """Remove the folder (after the checkpoint is written)."""
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                path.unlink()
            self.dir.rmdir()


# ----------------------------------------------------------------------------- loop
HELDOUT_BATCH = 32   # held-out NLL batch size (halved on out-of-memory errors)

@dataclass
class TrainResult:
    state: dict
    log_rows: list[dict]
    summary: dict


def heldout_nll(model, adapter, seqs: list[list[int]], pad_id: int, device, batch_size: int = 32,
                use_adapter: bool = True, *, oom_log: list | None = None, desc: str = "held-out NLL") -> float:
    """Token-weighted mean NLL on held-out sequences (inference mode; the batch halves on an
    out-of-memory error, mmie.model.memory)."""
    if not seqs:
        raise ValueError("no held-out sequences to evaluate (train.heldout_items or the held-out split is empty)")
    done: list[tuple[float, int]] = []   # one entry per batch that ran through

    def run(start: int, stop: int) -> None:
        ids, mask = right_pad(seqs[start:stop], pad_id, device)
        lp, valid = token_logprobs(model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        done.append((float(-(lp * valid).sum()), int(valid.sum())))

    ctx = adapter.active if use_adapter else adapter.reference
    with torch.inference_mode(), ctx():
        in_batches(len(seqs), batch_size, run, desc=desc, oom_log=oom_log, progress=False,
                   hint="lower train.max_length")
    total, count = 0.0, 0
    for nll, n in done:
        total += nll
        count += n
    return total / count


def train(model, adapter, pad_id: int, forget: list[list[int]], retain: list[list[int]],
          heldout_forget: list[list[int]], heldout_retain: list[list[int]], cfg: dict, seed: int,
          desc: str = "unlearn", resume: ResumeStore | None = None,
          objective: Objective | None = None) -> TrainResult:
    """Run the unlearning loop; ``adapter`` provides ``parameters()``, ``active()``, ``reference()``,
    ``state_dict()``, ``load_state_dict()`` and, with ``resume``, ``resume_state()`` and
    ``load_resume_state()`` (every tensor training changes, in place, so the optimizer keeps its
    parameters). ``objective``: what to minimise (a method's own, e.g. RMU's); None: the one named
    by ``train.objective`` (``make_objective``)."""
    device = next(model.parameters()).device
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the adapter has no trainable parameters")
    if objective is None:
        if cfg["objective"] not in OBJECTIVES:
            raise ValueError(f"{desc}: unknown train.objective {cfg['objective']!r}; one of {', '.join(OBJECTIVES)}")
        objective = make_objective(cfg)
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, warm = cfg["max_steps"], cfg["warmup_steps"]

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(seed)
    saved = resume.load() if resume is not None else None
    bs = cfg["batch_size"]
    # memory back-off: every halving (training micro-batches, held-out batches) is recorded here, and the
    # sizes that worked are kept for the rest of the run (and across a resume)
    oom_log: list[dict] = [] if saved is None else saved.get("oom_retries", [])   # states of before: none
    micro = bs if saved is None else saved.get("micro_batch", bs)
    eval_bs = HELDOUT_BATCH if saved is None else saved.get("heldout_batch", HELDOUT_BATCH)
    announce = False

    def held_out(seqs: list[list[int]], use_adapter: bool = True) -> float:
        nonlocal eval_bs
        before = len(oom_log)
        value = heldout_nll(model, adapter, seqs, pad_id, device, eval_bs, use_adapter, oom_log=oom_log,
                            desc=f"{desc} held-out NLL")
        if len(oom_log) > before:
            eval_bs = oom_log[-1]["new_batch_size"]
        return value

    if saved is None:
        base_retain_ppl = math.exp(held_out(heldout_retain, use_adapter=False))
        base_forget_nll = held_out(heldout_forget, use_adapter=False)
        if not (math.isfinite(base_retain_ppl) and math.isfinite(base_forget_nll)):
            raise NonFiniteError(f"{desc}: the base model's held-out retain perplexity ({base_retain_ppl}) or forget "
                                 f"NLL ({base_forget_nll}) is not finite; no budget can be set. Check the model's "
                                 f"dtype (model.dtype) and the held-out texts.")
        rows: list[dict] = [{"step": 0, "retain_ppl": base_retain_ppl, "forget_nll": base_forget_nll}]
        kept: dict | None = None   # the initial state is no result (LoReFT is not even the identity at init)
        tokens, start, seconds_before, resumed_from = 0, 1, 0.0, None
    else:
        adapter.load_resume_state(saved["adapter"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["batch_rng"])
        set_rng_states(saved["rng"])
        base_retain_ppl, base_forget_nll = saved["base_retain_ppl"], saved["base_forget_nll"]
        rows, kept, tokens = saved["rows"], saved["kept"], saved["tokens"]
        resumed_from = saved["step"]
        start, seconds_before = resumed_from + 1, saved["seconds"]
        log.warning("%s: resuming after step %d of %d from %s (a previous run of this job was interrupted; "
                    "steps 1-%d are not repeated)", desc, resumed_from, steps, resume.path, resumed_from)
    budget = cfg["max_retain_ppl_ratio"] * base_retain_ppl
    stopped = "max_steps"
    t0 = time.time()
    for step in tqdm(range(start, steps + 1), desc=desc, mininterval=2.0, initial=start - 1, total=steps):
        fb = [forget[i] for i in torch.randint(len(forget), (bs,), generator=gen).tolist()]
        rb = [retain[i] for i in torch.randint(len(retain), (bs,), generator=gen).tolist()]
        f_ids, f_mask = right_pad(fb, pad_id, device)
        r_ids, r_mask = right_pad(rb, pad_id, device)
        while True:
            opt.zero_grad(set_to_none=True)   # also drops what a step that ran out of memory accumulated
            try:
                loss, parts = step_gradients(objective, model, adapter, params, f_ids, f_mask, r_ids, r_mask, micro,
                                             desc, step)
                break
            except (RuntimeError, MemoryError) as err:
                if not is_oom(err):
                    raise
                if micro == 1:
                    raise RuntimeError(
                        f"{desc}: out of memory at step {step} even in micro-batches of 1 sequence (train.batch_size "
                        f"{bs}, train.max_length {cfg['max_length']}); lower train.max_length, or use a smaller "
                        f"model or a device with more memory") from err
                micro = max(1, micro // 2)
                oom_log.append({"where": f"{desc} step {step}", "new_batch_size": micro})
                log.warning("%s: out of memory at step %d, redoing the step in micro-batches of %d (batch size %d)",
                            desc, step, micro, bs)
                announce = True
            if torch.cuda.is_available():   # after the except clause: its traceback held the failed attempt's tensors
                torch.cuda.empty_cache()
        if announce:   # once, when a smaller micro-batch size worked
            log.warning("%s: micro-batches of %d sequences (train.batch_size %d) fit; the rest of the run "
                        "accumulates the gradient of each step over them", desc, micro, bs)
            announce = False
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        if not torch.isfinite(grad_norm):
            raise NonFiniteError(f"{desc}: non-finite gradient norm at step {step}; no checkpoint was written")
        opt.step()
        sched.step()
        tokens += int(f_mask.sum() + r_mask.sum())
        row = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
               "lr": sched.get_last_lr()[0], "grad_norm": grad_norm.item()}
        if step % cfg["eval_every"] == 0 or step == steps:
            row["retain_ppl"] = math.exp(held_out(heldout_retain))
            row["forget_nll"] = held_out(heldout_forget)
            # written so that NaN fails (every comparison with NaN is false)
            problems = []
            if not (row["retain_ppl"] <= budget):
                problems.append(f"held-out retain perplexity {row['retain_ppl']:.2f} is not <= "
                                f"{cfg['max_retain_ppl_ratio']} x base {base_retain_ppl:.2f}")
            if not math.isfinite(row["forget_nll"]):
                problems.append(f"held-out forget NLL {row['forget_nll']} is not finite")
            if problems:
                rows.append(row)
                stopped = f"early stop at step {step}: " + " and ".join(problems)
                finite = math.isfinite(row["retain_ppl"]) and math.isfinite(row["forget_nll"])
                (log.info if finite else log.warning)("%s: %s", desc, stopped)
                break
            kept = {"state": adapter.state_dict(), "step": step}
        rows.append(row)
        if resume is not None and step % cfg["eval_every"] == 0 and step < steps:
            resume.save({"step": step, "adapter": adapter.resume_state(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "batch_rng": gen.get_state(), "rng": rng_states(),
                         "base_retain_ppl": base_retain_ppl, "base_forget_nll": base_forget_nll,
                         "rows": rows, "kept": kept, "tokens": tokens, "seconds": seconds_before + time.time() - t0,
                         "oom_retries": oom_log, "micro_batch": micro, "heldout_batch": eval_bs})
    seconds = seconds_before + time.time() - t0
    if kept is None:
        raise NoStateWithinBudget(
            f"{desc}: no evaluated training state stayed within the retain budget ({stopped}); no checkpoint was "
            f"written. Lower train.lr, evaluate more often (train.eval_every) or raise train.max_retain_ppl_ratio.")
    adapter.load_state_dict(kept["state"])
    summary = {"kept_step": kept["step"], "stopped": stopped, "steps_run": rows[-1]["step"],
               "base_retain_ppl": base_retain_ppl, "base_forget_nll": base_forget_nll,
               "train_seconds": round(seconds, 2), "tokens": tokens,
               "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
               "resumed_after_step": resumed_from, "micro_batch_size": micro, "oom_retries": oom_log}
    return TrainResult(state=kept["state"], log_rows=rows, summary=summary)
