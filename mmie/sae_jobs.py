"""Job functions of the SAE rules (METHOD §7): ``train_sae`` (one SAE per selected layer, from the
activation cache) and ``select_features`` (the SAE's quality in the model and the chosen latents).
Rule scripts only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmie import io, provenance
from mmie.config import section
from mmie.errors import DataError

log = logging.getLogger(__name__)
# Roles the SAE is not trained on: gibberish is a control for feature selection, and the romanized
# target must stay unseen so that `semantic` selection tests generalisation across scripts.
NOT_TRAINED_ON = ("gibberish", "forget_romanized")


def sae_seed(config: dict) -> int:
    """The SAE is shared by every run seed: it is trained (and its features chosen) with the first."""
    return int(config["seeds"][0])


def train_sae(config: dict, layer: int, cache_path: str, out_dir: str) -> None:
    """Train the layer's SAE on every cached role except gibberish and the romanized target,
    holding out ``sae.holdout_fraction`` of those tokens (seeded) for the quality figures, which go
    into ``mmie.json`` under ``quality``."""
    import torch

    from mmie.activations import read_cache
    from mmie.models import resolve_device
    from mmie.sae import quality, save_sae
    from mmie.sae import train_sae as fit
    from mmie.seeding import seed_everything

    t0 = time.time()
    cfg = config["sae"]
    seed = sae_seed(config)
    torch.set_num_threads(config["resources"]["torch_threads"])
    seed_everything(seed, config["deterministic"])
    cache = read_cache(cache_path, layer=layer)
    roles = sorted(r for r in cache.acts if r not in NOT_TRAINED_ON)
    if not roles:
        raise DataError(f"activation cache {cache_path} has no roles to train an SAE on ({sorted(cache.acts)})")
    acts = torch.cat([cache.acts[r] for r in roles])
    n = acts.shape[0]
    n_hold = max(1, round(cfg["holdout_fraction"] * n))
    if n - n_hold < 2:
        raise DataError(f"activation cache {cache_path}: {n} tokens are too few to hold out {n_hold} "
                        f"(sae.holdout_fraction={cfg['holdout_fraction']}) and train on the rest")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, train = acts[perm[:n_hold]], acts[perm[n_hold:]]
    del acts
    device = resolve_device(cfg["device"])
    sae, stats = fit(train, cfg, seed, device)
    q = quality(sae, held)
    log.info("layer %d SAE on %d held-out tokens: %s", layer, n_hold, q)
    runtime = {"device": device, "tokens_per_s": stats["tokens_per_s"], "train_seconds": stats["seconds"],
               "job_seconds": round(time.time() - t0, 1)}
    meta = {
        "model_fingerprint": cache.meta["model_fingerprint"], "layer": layer, "seed": seed,
        "training": stats, "quality": {**q, "split": "held-out cached tokens"},
        "data": {"roles": roles, "cached_tokens": int(n), "train_tokens": int(n - n_hold), "holdout_tokens": int(n_hold),
                 "holdout_fraction": cfg["holdout_fraction"], "cache": str(cache_path)},
        "provenance": provenance.build(config, section(config, "sae"), seed=seed, rule="train_sae",
                                       inputs=[cache_path], runtime=runtime),
    }
    save_sae(sae, out_dir, meta)


def select_features(config: dict, layer: int, model_dir: str | None, data_dir: str, cache_path: str, sae_dir: str,
                    features_out: str, quality_out: str) -> None:
    """Load the model once; check the cache and the SAE against its fingerprint; write the SAE's
    quality (held-out figures from training + loss recovered in the model on ``sae.quality_texts``
    forget/train and as many retain/train texts) and the selected features."""
    import torch

    from mmie.activations import model_fingerprint, read_cache
    from mmie.features import select_features as choose
    from mmie.models import load_model
    from mmie.sae import WEIGHTS_FILE, load_sae, loss_recovered, read_meta
    from mmie.seeding import seed_everything

    t0 = time.time()
    seed = sae_seed(config)
    torch.set_num_threads(config["resources"]["torch_threads"])
    seed_everything(seed, config["deterministic"])
    lm = load_model(config["model"], model_dir)
    fp = model_fingerprint(lm.model)
    cache = read_cache(cache_path, layer=layer, fingerprint=fp)
    device = str(next(lm.model.parameters()).device)
    sae = load_sae(sae_dir, layer=layer, model_fingerprint=fp, d_in=cache.d_in, device=device)
    meta = read_meta(sae_dir)
    data = Path(data_dir)
    forget = [r["text"] for r in io.read_jsonl(data / "forget" / "train.jsonl")]
    retain = [r["text"] for r in io.read_jsonl(data / "retain" / "train.jsonl")]
    acts_cfg = config["layers"]["activations"]
    n_q = config["sae"]["quality_texts"]
    lr = loss_recovered(lm.model, lm.tokenizer, layer, sae, forget[:n_q] + retain[:n_q],
                        max_length=acts_cfg["max_length"], batch_size=acts_cfg["batch_size"])
    log.info("layer %d loss recovered: %s", layer, lr)
    inputs = [cache_path, str(Path(sae_dir) / WEIGHTS_FILE), data / "forget" / "train.jsonl",
              data / "retain" / "train.jsonl"]
    held = meta["quality"]
    report = {"layer": layer, "fvu": held["fvu"], "l0": held["l0"], "dead_share": held["dead_share"],
              "mse": held["mse"], "holdout_tokens": held["tokens"], **lr,
              "training": {k: meta["training"][k] for k in ("tokens", "steps", "seconds", "tokens_per_s", "final_mse")},
              "provenance": provenance.build(config, section(config, "sae", "layers"), seed=seed, rule="select_features",
                                             inputs=inputs, runtime=lm.runtime)}
    fcfg = config["features"]
    result = choose(fcfg["method"], sae, cache, fcfg, model=lm.model, tok=lm.tokenizer, layer=layer,
                    forget_texts=forget, retain_texts=retain, seed=seed,
                    max_length=acts_cfg["max_length"], batch_size=acts_cfg["batch_size"])
    result["provenance"] = provenance.build(config, section(config, "features", "sae", "layers"), seed=seed,
                                            rule="select_features", inputs=inputs,
                                            texts={"forget/train": forget, "retain/train": retain},
                                            runtime={**lm.runtime, "job_seconds": round(time.time() - t0, 1)})
    io.write_json(quality_out, report)
    io.write_json(features_out, result)
