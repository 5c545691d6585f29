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
bit for bit, as an uninterrupted run."""

from __future__ import annotations

import logging
import math
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmie import io
from mmie.model.likelihood import right_pad

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
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    return tok_lp, valid


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).sum() / valid.sum().clamp(min=1)


def seq_sum(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum over the valid positions: the sequence log-likelihood of token log-probabilities."""
    return (values * valid).sum(dim=1)


def seq_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return seq_sum(values, valid) / valid.sum(dim=1).clamp(min=1)


def npo_loss(seq_lp: torch.Tensor, ref_seq_lp: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β) · mean over sequences of log σ(−β (log πθ − log πref)), from per-sequence log-likelihoods."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_lp - ref_seq_lp)).mean()


def forget_loss(kind: str, tok_lp: torch.Tensor, valid: torch.Tensor, ref_tok_lp: torch.Tensor | None,
                beta: float, bound: float) -> torch.Tensor:
    if kind == "ga":
        return masked_mean(tok_lp, valid)
    if kind == "bounded":
        return -bound * torch.tanh(-masked_mean(tok_lp, valid) / bound)
    if kind in NPO_OBJECTIVES:
        if ref_tok_lp is None:
            raise ValueError(f"{kind} needs reference log-probabilities")
        per_seq = seq_sum if kind == "npo" else seq_mean
        return npo_loss(per_seq(tok_lp, valid), per_seq(ref_tok_lp, valid), beta)
    raise ValueError(f"unknown forget objective {kind!r}; one of {', '.join(OBJECTIVES)}")


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-pad positions of KL(p_ref ‖ pθ)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return masked_mean(kl, mask.bool())


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
@dataclass
class TrainResult:
    state: dict
    log_rows: list[dict]
    summary: dict


def heldout_nll(model, adapter, seqs: list[list[int]], pad_id: int, device, batch_size: int = 32,
                use_adapter: bool = True) -> float:
    """Token-weighted mean NLL on held-out sequences (inference mode)."""
    if not seqs:
        raise ValueError("no held-out sequences to evaluate (train.heldout_items or the held-out split is empty)")
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
          desc: str = "unlearn", resume: ResumeStore | None = None) -> TrainResult:
    """Run the unlearning loop; ``adapter`` provides ``parameters()``, ``active()``, ``reference()``,
    ``state_dict()``, ``load_state_dict()`` and, with ``resume``, ``resume_state()`` and
    ``load_resume_state()`` (every tensor training changes, in place, so the optimizer keeps its
    parameters)."""
    device = next(model.parameters()).device
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the adapter has no trainable parameters")
    if cfg["objective"] not in OBJECTIVES:
        raise ValueError(f"{desc}: unknown train.objective {cfg['objective']!r}; one of {', '.join(OBJECTIVES)}")
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, warm = cfg["max_steps"], cfg["warmup_steps"]

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(seed)
    saved = resume.load() if resume is not None else None
    if saved is None:
        base_retain_ppl = math.exp(heldout_nll(model, adapter, heldout_retain, pad_id, device, use_adapter=False))
        base_forget_nll = heldout_nll(model, adapter, heldout_forget, pad_id, device, use_adapter=False)
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
    bs = cfg["batch_size"]
    npo = cfg["objective"] in NPO_OBJECTIVES
    for step in tqdm(range(start, steps + 1), desc=desc, mininterval=2.0, initial=start - 1, total=steps):
        fb = [forget[i] for i in torch.randint(len(forget), (bs,), generator=gen).tolist()]
        rb = [retain[i] for i in torch.randint(len(retain), (bs,), generator=gen).tolist()]
        f_ids, f_mask = right_pad(fb, pad_id, device)
        r_ids, r_mask = right_pad(rb, pad_id, device)
        with torch.no_grad(), adapter.reference():
            ref_r_logits = model(input_ids=r_ids, attention_mask=r_mask).logits
            ref_f_lp = (token_logprobs(model(input_ids=f_ids, attention_mask=f_mask).logits, f_ids, f_mask)[0]
                        if npo else None)
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
                         "rows": rows, "kept": kept, "tokens": tokens, "seconds": seconds_before + time.time() - t0})
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
               "resumed_after_step": resumed_from}
    return TrainResult(state=kept["state"], log_rows=rows, summary=summary)
