"""Job functions of the SAE rules (docs/method.md §7): ``train_sae`` (one SAE per selected layer, from the
activation cache) and ``select_features`` (the SAE's quality in the model and the chosen latents).
Rule scripts only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmie import io, provenance
from mmie.config import section
from mmie.errors import DataError, SAEError

log = logging.getLogger(__name__)
# Roles the SAE is not trained on: gibberish is a control for feature selection, and the romanized
# target must stay unseen so that `semantic` selection tests generalisation across scripts.
NOT_TRAINED_ON = ("gibberish", "forget_romanized")


def sae_seed(config: dict) -> int:
    """The SAE is shared by every run seed: it is trained (and its features chosen) with the first."""
    return int(config["seeds"][0])


def holdout_texts(doc: dict, fraction: float, seed: int, *, source: str = "activation cache") -> dict[str, list[int]]:
    """Per role, the indices of the cached texts held out of SAE training: ``max(1,
    round(fraction × texts))`` whole texts (at most all but one), drawn by a generator seeded with
    ``seed`` (roles in sorted order). ``doc[role]`` is the text index of every cached token."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    held = {}
    for role in sorted(doc):
        texts = torch.unique(doc[role])
        if len(texts) < 2:
            raise DataError(f"{source}: role {role!r} has {len(texts)} text(s); holding out whole texts for the SAE's "
                            f"quality needs at least 2 per role (raise layers.activations.max_texts)")
        n_hold = min(len(texts) - 1, max(1, round(fraction * len(texts))))
        pick = torch.randperm(len(texts), generator=gen)[:n_hold]
        held[role] = sorted(int(t) for t in texts[pick])
    return held


def split_by_text(cache, roles: list[str], held: dict[str, list[int]]):
    """The cached tokens of ``roles`` split into (training rows, held-out rows): a token is held
    out exactly when its text is in ``held[role]``."""
    import torch

    train, test = [], []
    for role in roles:
        mask = torch.isin(cache.doc[role], torch.tensor(held[role], dtype=cache.doc[role].dtype))
        train.append(cache.acts[role][~mask])
        test.append(cache.acts[role][mask])
    return torch.cat(train), torch.cat(test)


def train_sae(config: dict, layer: int, cache_path: str, out_dir: str) -> None:
    """Train the layer's SAE on every cached role except gibberish and the romanized target,
    holding out whole texts — ``sae.holdout_fraction`` of each role's cached texts (seeded; see
    ``holdout_texts``) — for the quality figures, which go into ``mmie.json`` under ``quality``;
    the held-out text indices go under ``data.holdout_texts`` (``select_features`` computes loss
    recovered on them)."""
    import torch

    from mmie.activations import read_cache
    from mmie.models import resolve_device
    from mmie.sae import quality, save_sae
    from mmie.sae import train_sae as fit
    from mmie.seeding import seed_everything

    t0 = time.time()
    cfg = config["sae"]
    seed = sae_seed(config)
    seed_everything(seed, config["deterministic"])
    cache = read_cache(cache_path, layer=layer)
    roles = sorted(r for r in cache.acts if r not in NOT_TRAINED_ON)
    if not roles:
        raise DataError(f"activation cache {cache_path} has no roles to train an SAE on ({sorted(cache.acts)})")
    texts = holdout_texts({r: cache.doc[r] for r in roles}, cfg["holdout_fraction"], seed,
                          source=f"activation cache {cache_path}")
    train, held = split_by_text(cache, roles, texts)
    n, n_hold = train.shape[0] + held.shape[0], held.shape[0]
    if train.shape[0] < 2 or n_hold == 0:
        raise DataError(f"activation cache {cache_path}: holding out texts {texts} leaves {train.shape[0]} training "
                        f"and {n_hold} held-out tokens; lower sae.holdout_fraction or cache more texts")
    device = resolve_device(cfg["device"])
    sae, stats = fit(train, cfg, seed, device)
    q = quality(sae, held)
    log.info("layer %d SAE on %d held-out tokens of %d held-out texts: %s", layer, n_hold,
             sum(len(t) for t in texts.values()), q)
    runtime = {"device": device, "tokens_per_s": stats["tokens_per_s"], "train_seconds": stats["seconds"],
               "job_seconds": round(time.time() - t0, 1)}
    meta = {
        "model_fingerprint": cache.meta["model_fingerprint"], "layer": layer, "seed": seed,
        "training": stats, "quality": {**q, "split": "held-out cached texts (never trained on)"},
        "data": {"roles": roles, "cached_tokens": int(n), "train_tokens": int(n - n_hold), "holdout_tokens": int(n_hold),
                 "holdout_fraction": cfg["holdout_fraction"], "holdout_texts": texts,
                 "train_texts": {r: int(len(torch.unique(cache.doc[r]))) - len(texts[r]) for r in roles},
                 "cache": str(cache_path)},
        "provenance": provenance.build(config, section(config, "sae"), seed=seed, rule="train_sae",
                                       inputs=[cache_path], runtime=runtime),
    }
    save_sae(sae, out_dir, meta)


def held_out_texts(cache, meta: dict, role: str, rows: list[str], tok, max_length: int, limit: int,
                   where: str) -> list[int]:
    """The first ``limit`` of the SAE's held-out texts of ``role`` (indices into ``rows``, the
    role's train texts), each checked against the cache: text i must encode to as many tokens as
    the cache holds for text i (a cache built from other texts is an error, not a silent leak)."""
    from mmie.activations import encode_texts

    held = meta.get("data", {}).get("holdout_texts")
    if held is None:
        raise SAEError(f"{where}/mmie.json has no data.holdout_texts: the SAE was trained by an older mmie that held "
                       f"out tokens, not texts; delete the folder and rerun train_sae")
    if not held.get(role):
        raise DataError(f"{where}/mmie.json: no held-out {role!r} texts (held out: {sorted(held)}); the SAE must be "
                        f"trained on the {role} role")
    idx = [int(i) for i in held[role][:limit]]
    if idx[-1] >= len(rows):
        raise DataError(f"{where}: held-out {role} text {idx[-1]} does not exist ({len(rows)} texts); the data changed "
                        f"after the activation cache was built: rerun cache_activations")
    seqs, skip = encode_texts(tok, [rows[i] for i in idx], max_length)
    for i, seq in zip(idx, seqs, strict=True):
        cached = int((cache.doc[role] == i).sum())
        if cached != len(seq) - skip:
            raise DataError(f"activation cache: {role} text {i} has {cached} cached tokens but the data's {role} "
                            f"text {i} encodes to {len(seq) - skip}: the cache was built from other texts; rerun "
                            f"cache_activations")
    return idx


def select_features(config: dict, layer: int, model_dir: str | None, data_dir: str, cache_path: str, sae_dir: str,
                    features_out: str, quality_out: str) -> None:
    """Load the model once; check the cache and the SAE against its fingerprint; write the SAE's
    quality (held-out figures from training + loss recovered in the model on the first
    ``sae.quality_texts`` held-out forget/train texts and as many held-out retain/train texts: texts
    the SAE never trained on) and the selected features."""

    from mmie.activations import model_fingerprint, read_cache
    from mmie.features import select_features as choose
    from mmie.models import load_model
    from mmie.sae import WEIGHTS_FILE, load_sae, loss_recovered, read_meta
    from mmie.seeding import seed_everything

    t0 = time.time()
    seed = sae_seed(config)
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
    lr_texts = {role: held_out_texts(cache, meta, role, rows, lm.tokenizer, acts_cfg["max_length"], n_q, str(sae_dir))
                for role, rows in (("forget", forget), ("retain", retain))}
    lr = loss_recovered(lm.model, lm.tokenizer, layer, sae,
                        [forget[i] for i in lr_texts["forget"]] + [retain[i] for i in lr_texts["retain"]],
                        max_length=acts_cfg["max_length"], batch_size=acts_cfg["batch_size"])
    log.info("layer %d loss recovered: %s", layer, lr)
    inputs = [cache_path, str(Path(sae_dir) / WEIGHTS_FILE), data / "forget" / "train.jsonl",
              data / "retain" / "train.jsonl"]
    held = meta["quality"]
    report = {"layer": layer, "fvu": held["fvu"], "l0": held["l0"], "dead_share": held["dead_share"],
              "mse": held["mse"], "holdout_tokens": held["tokens"], **lr,
              "holdout_texts": {r: len(t) for r, t in meta["data"]["holdout_texts"].items()},
              "loss_recovered_texts": lr_texts, "split": "held-out texts (never in SAE training)",
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
