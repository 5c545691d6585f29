"""The training loop of the trained arms (docs/method.md §6); the objectives it minimises are
``mmie.arms.objectives``, its resumable state ``mmie.arms.resume``.

Hygiene: AdamW, linear warm-up then cosine decay, gradient clipping, a NaN/Inf guard that stops the
job naming the step (no checkpoint is written), and early stopping on held-out retain perplexity:
when it leaves ``max_retain_ppl_ratio × base`` (or is not a finite number), training stops and the
last state within budget is kept.

Resume: with a :class:`mmie.arms.resume.ResumeStore`, every ``eval_every`` steps the whole training
state is saved; a rerun with the same identity key continues from it and ends with the same adapter,
bit for bit, as an uninterrupted run.

Memory back-off (mmie.model.memory): a step whose forward/backward runs out of memory is redone in
micro-batches (rows of both batches) of half the size, down to 1, accumulating the gradient of the
whole batch: every term of the loss (:class:`mmie.arms.objectives.Objective`) is a sum over a
micro-batch divided by a count of the whole batch, taken from the masks before any forward pass. The
size that worked stays for the rest of the run (and across a resume); every halving, and those of the
held-out NLL passes, is recorded in the summary's ``oom_retries``. Without an out-of-memory error the
whole batch is one micro-batch and the computation is that of the loop before the back-off, bit for bit."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from mmie.arms.objectives import OBJECTIVES, Objective, make_objective, token_logprobs
from mmie.arms.resume import ResumeStore, rng_states, set_rng_states
from mmie.model.likelihood import right_pad
from mmie.model.memory import in_batches, is_oom

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/Inf during training."""


class NoStateWithinBudget(RuntimeError):
    """Held-out retain perplexity left its budget before any evaluated training state stayed inside it."""


def _combine(objective: Objective, parts: dict[str, torch.Tensor], names=None) -> torch.Tensor:
    """Σ weight × part over the terms (all, or ``names``), in the objective's order."""
    loss = None
    for name in objective.spec if names is None else names:
        part = objective.spec[name].weight * parts[name]
        loss = part if loss is None else loss + part
    if loss is None:
        raise ValueError("no objective terms to combine")
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
        assert term.outer is not None   # outer holds the terms that have one
        (slope,) = torch.autograd.grad(term.outer(at), at)
        for p, g in zip(params, inner_grads[k], strict=True):
            if g is not None:
                scaled = term.weight * slope * g
                p.grad = scaled if p.grad is None else p.grad + scaled
    parts = {k: term.outer(sums[k]) if term.outer else sums[k] for k, term in objective.spec.items()}
    loss = _combine(objective, parts)
    check(parts, "", loss)
    return loss, parts


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
        assert resume is not None   # saved came from it
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
