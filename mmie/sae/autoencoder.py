"""TopK sparse autoencoders on cached residual activations (docs/method.md §7), with sae-lens classes so a
checkpoint loads with plain ``sae_lens.SAE.load_from_disk``.

A TopK SAE encodes ``z = TopK_k(ReLU(W_enc (x − b_dec) + b_enc))`` and decodes ``x̂ = z W_dec + b_dec``.
It is trained with sae-lens' ``TopKTrainingSAE`` + ``SAETrainer`` on an iterator over the cached
tokens (no HookedTransformer), with the decoder rows kept at unit norm in the saved inference model
(sae-lens folds the norms in ``save_inference_model``).

Checkpoint folder (``sae/layer<L>/``): ``cfg.json`` + ``sae_weights.safetensors`` (sae-lens'
format) and ``mmie.json`` — the layer, model fingerprint, sizes, training statistics, the held-out
quality figures, sha256 of the two sae-lens files and the provenance. ``load_sae`` checks all of
them against what the caller expects.

Quality: ``quality`` (fraction of variance unexplained, L0, dead-latent share, MSE on the tokens of
held-out cached texts: whole texts the SAE never trains on, see ``mmie.sae.holdout``) and
``loss_recovered`` (next-token cross-entropy with the layer's output replaced by the reconstruction,
between the clean model and the zero-ablated layer)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmie.errors import ConfigError, DataError, MetricError, SAEError

log = logging.getLogger(__name__)

SAE_FORMAT = 1
META_FILE = "mmie.json"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# A latent that has not fired for this many training *tokens* counts as dead for sae-lens' TopK
# auxiliary loss (which teaches dead latents to model the residual). sae-lens' default window is
# 1000 steps — longer than a whole default run here (200k tokens / 512 = 391 steps), which would
# switch the auxiliary loss off. Expressed in tokens so it does not depend on the batch size.
DEAD_WINDOW_TOKENS = 20_000
_RETRAIN = "delete the folder and rerun train_sae"


# ----------------------------------------------------------------------------- training
def _batches(acts: torch.Tensor, batch_size: int, seed: int):
    """Endless [batch_size, d_in] batches: a seeded shuffle of every token, reshuffled (same
    generator) each time the tokens run out; a batch may straddle two shuffles."""
    gen = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    while True:
        parts, need = [], batch_size
        while need:
            if pos == n:
                perm, pos = torch.randperm(n, generator=gen), 0
            take = min(need, n - pos)
            parts.append(perm[pos:pos + take])
            pos += take
            need -= take
        yield acts[torch.cat(parts).to(acts.device)]


def _trainer_class():
    from sae_lens import SAETrainer

    class CheckedTrainer(SAETrainer):
        """sae-lens' trainer does not look at the loss: a non-finite one is an error here, naming
        the step (checked on every step; the MSE history gives the final training MSE)."""

        def __init__(self, *args, total_steps: int, log_every: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.total_steps, self.log_every = total_steps, log_every
            self.mse_history: list[float] = []

        def step(self, batch: torch.Tensor):
            out = super().step(batch)
            step = self.n_training_steps + 1  # sae-lens counts the step after this call
            loss = float(out.loss.detach())
            mse = float(out.losses["mse_loss"].detach())
            if not (math.isfinite(loss) and math.isfinite(mse)):
                raise SAEError(f"SAE training diverged: non-finite loss ({loss}; MSE {mse}) at step {step} of "
                               f"{self.total_steps} (lr {self.optimizer.param_groups[0]['lr']:.3g}); lower sae.lr "
                               f"or check the activation cache")
            self.mse_history.append(mse / batch.shape[-1])
            if step % self.log_every == 0 or step == self.total_steps:
                log.info("SAE step %d/%d: loss %.5g, MSE per element %.5g, lr %.3g", step, self.total_steps,
                         loss, self.mse_history[-1], self.optimizer.param_groups[0]["lr"])
            return out

    return CheckedTrainer


def train_sae(acts: torch.Tensor, cfg: dict, seed: int, device: str) -> tuple[Any, dict]:
    """Train a TopK SAE (sae-lens ``TopKTrainingSAE``) on ``acts`` [tokens, d_in] (float32).

    ``cfg`` is the config's ``sae`` section: ``d_sae = expansion × d_in``, ``k``, ``lr`` with a
    linear warm-up of ``lr_warm_up_steps`` then cosine annealing to ``lr_end`` (null = lr / 10),
    ``ceil(train_tokens / batch_size)`` steps of ``batch_size`` tokens (the tokens are cycled, each
    pass in a new seeded order). The SAE's initialisation uses ``torch.manual_seed(seed)`` (the
    global generator is reseeded); the same seed and data give the same weights on one device.

    Returns the trained SAE (a ``TopKTrainingSAE``; save it with ``save_sae``) and statistics:
    tokens, steps, seconds, tokens_per_s, final_mse (mean squared error per element over the last
    ≤10 steps), l0_train (mean active latents per token over the run), dead_latents_train (latents
    silent for the last ``dead_feature_window_steps``), and the settings used."""
    from sae_lens import LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    if acts.ndim != 2 or acts.shape[0] < 2:
        raise DataError(f"SAE training needs activations of shape [tokens ≥ 2, d_in], got {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise DataError("SAE training: the activations contain non-finite values; rebuild the activation cache")
    acts = acts.to(torch.float32)
    n, d_in = acts.shape
    d_sae, k = cfg["expansion"] * d_in, cfg["k"]
    if k > d_sae:
        raise ConfigError(f"sae.k ({k}) exceeds the number of latents d_sae = sae.expansion x d_in = {d_sae}")
    batch = cfg["batch_size"]
    steps = math.ceil(cfg["train_tokens"] / batch)
    lr = float(cfg["lr"])
    lr_end = float(cfg["lr_end"]) if cfg.get("lr_end") is not None else lr / 10
    if lr_end > lr:
        raise ConfigError(f"sae.lr_end ({lr_end}) must not exceed sae.lr ({lr})")
    warm = cfg["lr_warm_up_steps"]
    if warm >= steps:
        raise ConfigError(f"sae.lr_warm_up_steps ({warm}) must be below the number of training steps, "
                          f"ceil(sae.train_tokens / sae.batch_size) = {steps}: raise train_tokens or lower the warm-up")
    dead_window = max(1, math.ceil(DEAD_WINDOW_TOKENS / batch))

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device=device))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr, lr_end=lr_end,
        lr_scheduler_name="cosineannealing", lr_warm_up_steps=warm, device=device,
        dead_feature_window=dead_window, feature_sampling_window=steps,
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False))
    trainer = _trainer_class()(cfg=trainer_cfg, sae=sae, data_provider=_batches(acts.to(device), batch, seed),
                               total_steps=steps, log_every=max(1, steps // 10))
    log.info("training a TopK SAE: d_in %d, d_sae %d, k %d, %d steps x %d tokens from %d cached tokens on %s",
             d_in, d_sae, k, steps, batch, n, device)
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    for name, p in sae.named_parameters():
        if not torch.isfinite(p).all():
            raise SAEError(f"SAE training produced non-finite weights ({name}) after {trainer.n_training_steps} "
                           f"steps; lower sae.lr or check the activation cache")
    tail = trainer.mse_history[-10:]
    md = sae.cfg.metadata
    stats = {
        "tokens": int(trainer.n_training_samples), "steps": int(trainer.n_training_steps),
        "seconds": round(seconds, 3), "tokens_per_s": round(trainer.n_training_samples / max(seconds, 1e-9), 1),
        "final_mse": sum(tail) / len(tail), "cached_tokens": int(n), "epochs": round(trainer.n_training_samples / n, 3),
        "l0_train": float(md.l0) if md.l0 is not None else None,
        "dead_latents_train": int(md.num_dead_features) if md.num_dead_features is not None else None,
        "settings": {"d_in": d_in, "d_sae": d_sae, "k": k, "batch_size": batch, "lr": lr, "lr_end": lr_end,
                     "lr_warm_up_steps": warm, "lr_scheduler": "cosineannealing",
                     "dead_feature_window_steps": dead_window, "seed": seed, "device": device},
    }
    log.info("SAE trained: %s", {k_: v for k_, v in stats.items() if k_ != "settings"})
    return sae, stats


# ----------------------------------------------------------------------------- save / load
def _sha256(path: Path) -> str:
    from mmie.provenance import file_sha256

    return file_sha256(path)


def save_sae(sae, out_dir: str | os.PathLike, meta: dict) -> None:
    """Save the inference SAE (sae-lens ``cfg.json`` + ``sae_weights.safetensors``) and
    ``mmie.json`` (``meta`` — which must hold ``layer`` and ``model_fingerprint`` — plus the
    format, sizes and file hashes). Written into a temporary folder beside ``out_dir`` and renamed
    into place: a killed job leaves no half-written checkpoint."""
    from mmie import io

    missing = [key for key in ("layer", "model_fingerprint") if key not in meta]
    if missing:
        raise ValueError(f"save_sae: meta lacks {missing}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        # a training SAE saves its inference form (decoder norms folded); an inference SAE saves as is
        getattr(sae, "save_inference_model", sae.save_model)(tmp)
        record = {"format": SAE_FORMAT, "architecture": "topk", **meta, "layer": int(meta["layer"]),
                  "d_in": int(sae.cfg.d_in), "d_sae": int(sae.cfg.d_sae), "k": int(sae.cfg.k),
                  "files": {name: _sha256(tmp / name) for name in (CFG_FILE, WEIGHTS_FILE)}}
        io.write_json(tmp / META_FILE, record)
        umask = os.umask(0)
        os.umask(umask)
        for name in (CFG_FILE, WEIGHTS_FILE, META_FILE):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp / name, 0o666 & ~umask)  # temporary files are private (mkstemp/mkdtemp)
        os.chmod(tmp, 0o777 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_meta(out_dir: str | os.PathLike) -> dict:
    """``mmie.json`` of an SAE folder (an error naming the folder when it is missing or damaged)."""
    out = Path(out_dir)
    path = out / META_FILE
    if not out.is_dir():
        raise SAEError(f"SAE folder {out} does not exist; run train_sae")
    if not path.is_file():
        raise SAEError(f"{path} is missing: {out} is not a complete mmie SAE checkpoint; {_RETRAIN}")
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAEError(f"{path} cannot be read ({err}); {_RETRAIN}") from err
    if not isinstance(meta, dict) or meta.get("format") != SAE_FORMAT:
        raise SAEError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                       f"expected {SAE_FORMAT}; {_RETRAIN}")
    return meta


def load_sae(out_dir: str | os.PathLike, *, layer: int, model_fingerprint: str, d_in: int, device: str = "cpu"):
    """Load the inference SAE (``sae_lens.SAE.load_from_disk``), in eval mode with its parameters
    frozen, after checking ``mmie.json`` against the expected layer, model fingerprint and width and
    the files against their recorded sha256. Every problem is an ``SAEError`` naming the folder."""
    from sae_lens import SAE
    from safetensors import SafetensorError

    out = Path(out_dir)
    meta = read_meta(out)
    problems = []
    if int(meta.get("layer", -1)) != layer:
        problems.append(f"layer: expected {layer}, found {meta.get('layer')}")
    if meta.get("model_fingerprint") != model_fingerprint:
        problems.append(f"model fingerprint: expected {model_fingerprint}, found {meta.get('model_fingerprint')}")
    if int(meta.get("d_in", -1)) != d_in:
        problems.append(f"d_in: expected {d_in}, found {meta.get('d_in')}")
    if problems:
        raise SAEError(f"SAE {out} does not match: {'; '.join(problems)} — it was trained for another layer or "
                       f"model; {_RETRAIN}")
    for name, digest in meta.get("files", {}).items():
        path = out / name
        if not path.is_file():
            raise SAEError(f"{path} is missing; {_RETRAIN}")
        if _sha256(path) != digest:
            raise SAEError(f"{path} is corrupt (sha256 differs from the one recorded in {META_FILE}); {_RETRAIN}")
    try:
        sae = SAE.load_from_disk(str(out), device=device)
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError,
            RuntimeError) as err:
        raise SAEError(f"SAE {out} cannot be loaded ({type(err).__name__}: {err}); {_RETRAIN}") from err
    if (sae.cfg.d_in, sae.cfg.d_sae, getattr(sae.cfg, "k", None)) != (meta["d_in"], meta["d_sae"], meta["k"]):
        raise SAEError(f"SAE {out}: {CFG_FILE} (d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}, "
                       f"k {getattr(sae.cfg, 'k', None)}) disagrees with {META_FILE}; {_RETRAIN}")
    for name, p in sae.named_parameters():
        if not torch.isfinite(p).all():
            raise SAEError(f"SAE {out}: non-finite weights in {name}; {_RETRAIN}")
    sae.eval()
    sae.requires_grad_(False)
    return sae


# ----------------------------------------------------------------------------- quality
def _sae_device(sae) -> torch.device:
    return sae.W_dec.device


def quality(sae, acts: torch.Tensor, *, batch_size: int = 4096) -> dict:
    """Reconstruction quality on cached tokens ``acts`` [tokens, d_in] (the held-out texts' tokens):

    - ``fvu``: Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄: the mean token of ``acts``);
    - ``l0``: mean number of active (> 0) latents per token;
    - ``dead_share``: share of latents active on none of these tokens;
    - ``mse``: mean squared error per element; ``tokens``: the number of tokens."""
    n = int(acts.shape[0]) if acts.ndim == 2 else 0
    if n == 0:
        raise MetricError(f"SAE quality needs a non-empty [tokens, d_in] tensor, got {tuple(acts.shape)}")
    if acts.shape[1] != sae.cfg.d_in:
        raise SAEError(f"SAE quality: activations have width {acts.shape[1]}, the SAE expects {sae.cfg.d_in}")
    dev = _sae_device(sae)
    mean = acts.double().mean(0)
    sq_err = total_var = l0_sum = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=dev)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = acts[start:start + batch_size].to(dev, torch.float32)
            z = sae.encode(x)
            x_hat = sae.decode(z)
            sq_err += float((x - x_hat).double().pow(2).sum())
            total_var += float((x.double() - mean.to(dev)).pow(2).sum())
            active = z > 0
            l0_sum += float(active.sum())
            fired |= active.any(0)
    if not math.isfinite(sq_err):
        raise MetricError("SAE quality: the reconstruction error is not finite")
    if total_var <= 0:
        raise MetricError(f"SAE quality: the {n} tokens have zero variance; the fraction of variance unexplained "
                          f"is undefined")
    return {"fvu": sq_err / total_var, "l0": l0_sum / n, "dead_share": 1.0 - float(fired.float().mean()),
            "mse": sq_err / (n * acts.shape[1]), "tokens": n}


def loss_recovered(model, tok, layer: int, sae, texts: list[str], *, max_length: int, batch_size: int) -> dict:
    """Next-token cross-entropy (nats per token, padding masked) over ``texts`` with the output of
    decoder layer ``layer`` (a) untouched, (b) replaced by the SAE's reconstruction, (c) set to zero;
    ``loss_recovered = (ce_zero − ce_sae) / (ce_zero − ce_clean)`` (1 = the reconstruction is as good
    as the real activations, 0 = as bad as none).

    The tokenizer's special prefix (BOS) is prepended as everywhere in mmie, and its positions are
    kept clean in (b) and (c): its activation is an attention-sink outlier the SAE never saw (the
    cache leaves it out). Only tokens predicted from a replaced position are scored, so the three
    losses cover the same tokens and every one of them can be affected. ``ce_zero ≤ ce_clean``
    leaves the ratio undefined: an error, not a number."""
    import torch.nn.functional as F

    from mmie.model.hooks import edit_layer_outputs, to_hidden
    from mmie.model.likelihood import right_pad
    from mmie.sae.activations import encode_texts

    seqs, skip = encode_texts(tok, texts, max_length)
    # label j (token j + 1) is predicted from position j: scored when j ≥ skip
    seqs = [s for s in seqs if len(s) >= skip + 2]
    if not seqs:
        raise MetricError(f"loss recovered: none of the {len(texts)} texts has a token to score after the "
                          f"special prefix (max_length {max_length})")
    device = next(model.parameters()).device
    d_sae_dev = _sae_device(sae)

    def reconstruct(h: torch.Tensor) -> torch.Tensor:
        to_hidden(sae, h)
        x_hat = sae(h[:, skip:].reshape(-1, h.shape[-1]).to(_sae_device(sae), torch.float32))
        out = h.clone()
        out[:, skip:] = x_hat.reshape(h.shape[0], -1, h.shape[-1]).to(h.dtype)
        return out

    def zero(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[:, skip:] = 0
        return out

    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_tokens = 0
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            ids, mask = right_pad(seqs[start:start + batch_size], tok.pad_token_id, device)
            labels = ids[:, 1:]
            valid = mask[:, 1:].bool()
            valid[:, :skip] = False
            n_tokens += int(valid.sum())
            for name, edit in (("clean", None), ("sae", reconstruct), ("zero", zero)):
                if edit is None:
                    logits = model(input_ids=ids, attention_mask=mask).logits
                else:
                    with edit_layer_outputs(model, {layer: edit}):
                        logits = model(input_ids=ids, attention_mask=mask).logits
                nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                      reduction="none").view(labels.shape)
                totals[name] += float(nll[valid].sum())
    if _sae_device(sae) != d_sae_dev:
        sae.to(d_sae_dev)
    ce = {name: total / n_tokens for name, total in totals.items()}
    if not all(math.isfinite(v) for v in ce.values()):
        raise MetricError(f"loss recovered at layer {layer}: non-finite cross-entropy {ce}")
    if ce["zero"] <= ce["clean"]:
        raise MetricError(f"loss recovered at layer {layer} is undefined: zero-ablating the layer's output does not "
                          f"raise the cross-entropy (ce_zero {ce['zero']:.4f} <= ce_clean {ce['clean']:.4f})")
    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"],
            "loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
            "tokens": n_tokens, "texts": len(seqs)}
