"""SAE feature selection per layer (docs/method.md §7): which latents carry the target language.

Firing frequency of a latent on a role = share of that role's cached tokens on which it is active
(> 0). The retain filter, shared by every method: a latent firing on more than
``retain_max_freq`` of the retain tokens, or of any neighbour language's tokens, is dropped.

- ``frequency`` (the SAEBench unlearning recipe): retain filter, ``freq_forget ≥ min_forget_freq``;
  ``score = freq_forget`` (rank by forget frequency, as SAEBench does; the retain frequency only
  filters, ties go to the latent with the lower retain/neighbour frequency).
- ``semantic``: fires on the target in both scripts — ``freq_forget`` and ``freq_forget_romanized``
  ≥ ``min_forget_freq`` — but not on target-script gibberish (``freq_gibberish ≤
  gibberish_max_freq``) nor retain/neighbours (retain filter);
  ``score = min(freq_forget, freq_forget_romanized) − max(freq_gibberish, freq_retain_like)``.
- ``gradient``: attribution patching of the forget loss. With ``h`` the layer's output, ``g =
  ∂L/∂h`` (L = summed next-token NLL of ``gradient_texts`` forget texts; gradients enabled
  explicitly, model parameters frozen for the pass and restored after), ``z`` the latents and ``d_i``
  latent i's decoder direction: ablating latent i moves ``h`` by ``−z_i d_i``, which changes L by
  ``≈ −z_i (g · d_i)``. ``score_i = −Σ z_i (g · d_i) / tokens``: the estimated *increase* of the
  forget loss (nats per token) when the latent is ablated — higher = the latent does more for
  forget-language likelihood. Kept: score > 0, plus the retain filter and ``min_forget_freq`` as in
  ``frequency``. Retain texts, when given, get the same attribution (``retain_score``, reported only).

``rejected`` counts, per reason, the latents failing that criterion (a latent can fail several).
Nothing selected is an error naming the thresholds and the knobs.

The control (``random_gate``) is drawn by ``matched_random`` from the *control pool* that
``select_features`` records: the latents that are not chosen, pass the method's exclusion filters
with the same thresholds (the retain filter; ``semantic`` also the gibberish filter) and fire on
forget (``freq_forget > 0``). The draw matches the chosen latents' forget firing frequency by
quantile strata (see ``matched_random``). So that it can always be drawn, the number of chosen latents
is derived from the data (``derive_n_features``): at most ``n_features``, and no more than the control
pool can match; the features file records the requested and the used count and what limited it."""

from __future__ import annotations

import bisect
import logging
import random
from typing import Any

import torch

from mmie.errors import ConfigError, DataError, SAEError

log = logging.getLogger(__name__)
METHODS = ("frequency", "semantic", "gradient")
# Forget-frequency strata of the random control: quartiles of the chosen latents' frequencies.
CONTROL_STRATA = 4


def firing_frequency(sae, acts: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
    """Per latent, the share of the tokens in ``acts`` [tokens, d_in] on which it is active (> 0)."""
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise DataError(f"firing frequency needs a non-empty [tokens, d_in] tensor, got {tuple(acts.shape)}")
    dev = sae.W_dec.device
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=dev)
    with torch.inference_mode():
        for start in range(0, acts.shape[0], batch_size):
            z = sae.encode(acts[start:start + batch_size].to(dev, torch.float32))
            counts += (z > 0).sum(0).double()
    return (counts / acts.shape[0]).cpu()


def decoder_directions(sae) -> torch.Tensor:
    """[d_sae, d_in]: what one unit of each latent adds to the reconstruction."""
    w = sae.W_dec.detach()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):  # a training SAE: decode divides by the norm
        w = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return w


def attribution(model, tok, layer: int, sae, texts: list[str], *, max_length: int, batch_size: int,
                desc: str = "attribution") -> tuple[torch.Tensor, int]:
    """Per latent, ``−Σ z_i (∂L/∂h · d_i)`` over the texts' tokens (L: summed next-token NLL), and
    the number of scored tokens. The model is not changed: its parameters are frozen for the pass
    (``requires_grad`` restored afterwards), the only tensor needing a gradient is the layer output,
    and the hook is removed on exit."""
    import torch.nn.functional as F

    from mmie.model.hooks import edit_layer_outputs
    from mmie.model.likelihood import right_pad
    from mmie.sae.activations import encode_texts

    seqs, skip = encode_texts(tok, texts, max_length)
    seqs = [s for s in seqs if len(s) >= skip + 2]
    if not seqs:
        raise DataError(f"{desc}: none of the {len(texts)} texts has a token to score after the special prefix")
    device = next(model.parameters()).device
    dirs = decoder_directions(sae)
    sae_dev = dirs.device
    scores = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n_tokens = 0
    flags = [(p, p.requires_grad) for p in model.parameters()]
    captured: list[torch.Tensor] = []

    def capture(h: torch.Tensor) -> torch.Tensor:
        leaf = h.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(seqs), batch_size):
                ids, mask = right_pad(seqs[start:start + batch_size], tok.pad_token_id, device)
                captured.clear()
                with edit_layer_outputs(model, {layer: capture}):
                    logits = model(input_ids=ids, attention_mask=mask).logits
                labels, valid = ids[:, 1:], mask[:, 1:].bool()
                nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                      reduction="none").view(labels.shape)
                # tokens predicted from a non-prefix position (the prefix is never an SAE input)
                valid[:, :skip] = False
                loss = nll[valid].sum()
                (grad,) = torch.autograd.grad(loss, captured[0])
                h = captured[0].detach()
                pos = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
                pos[:, skip:] = mask[:, skip:].bool()  # real, non-prefix positions
                with torch.no_grad():
                    hx = h[pos].to(sae_dev, torch.float32)
                    gx = grad[pos].to(sae_dev, torch.float32)
                    z = sae.encode(hx)
                    scores -= (z * (gx @ dirs.T)).sum(0).double().cpu()
                n_tokens += int(valid.sum())
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        captured.clear()
    if not torch.isfinite(scores).all():
        raise SAEError(f"{desc}: non-finite attribution scores at layer {layer}")
    return scores / n_tokens, n_tokens


def _neighbour_roles(cache) -> list[str]:
    return sorted(r for r in cache.acts if r.startswith("neighbour_"))


def select_features(method: str, sae, cache, cfg: dict, *, model=None, tok=None, layer: int | None = None,
                    forget_texts: list[str] | None = None, retain_texts: list[str] | None = None, seed: int = 0,
                    max_length: int = 64, batch_size: int = 8) -> dict:
    """Choose at most ``cfg["n_features"]`` latents of ``sae`` by ``method`` (see the module doc):
    fewer when fewer pass the filters, or when the random control could not be drawn for that many
    (``derive_n_features``; recorded under ``n_features``).

    ``cache``: the layer's ``mmie.sae.activations.Cache`` (roles ``forget``, ``retain``, neighbours;
    ``semantic`` also needs ``forget_romanized`` and ``gibberish``). ``gradient`` needs ``model``,
    ``tok`` and ``forget_texts`` (the first ``cfg["gradient_texts"]`` are used; ``retain_texts``
    likewise, for the reported ``retain_score``); ``max_length``/``batch_size`` apply to its passes.
    Returns ``{method, layer, features: [{index, score, freq_forget, freq_retain, freq_neighbours,
    freq_forget_romanized, freq_gibberish, ...}], n_selected, n_candidates, d_sae, rejected, alive,
    thresholds, n_features, score, tokens, seed, control_pool}``, features sorted by score (highest first);
    ``alive`` lists the latents active on at least one cached token of any role; ``control_pool``
    holds, column-wise, the index and the forget/retain/neighbour (``semantic``: also gibberish)
    firing frequencies of every latent a random control may draw (see the module doc), with the
    filters that defined it."""
    if method not in METHODS:
        raise ConfigError(f"features.method {method!r} is not one of {METHODS}")
    layer = cache.layer if layer is None else layer
    if layer != cache.layer:
        raise ConfigError(f"select_features: layer {layer} but the activation cache is for layer {cache.layer}")
    if cache.d_in != sae.cfg.d_in:
        raise SAEError(f"select_features: the cache has width {cache.d_in}, the SAE expects {sae.cfg.d_in}")
    need = ["forget", "retain"] + (["forget_romanized", "gibberish"] if method == "semantic" else [])
    missing = [r for r in need if r not in cache.acts]
    if missing:
        raise DataError(f"select_features ({method}): the activation cache lacks roles {missing}")
    freq = {role: firing_frequency(sae, acts) for role, acts in cache.acts.items()}
    neighbours = _neighbour_roles(cache)
    retain_like = torch.stack([freq["retain"]] + [freq[r] for r in neighbours]).max(0).values
    r_max, f_min, g_max = cfg["retain_max_freq"], cfg["min_forget_freq"], cfg["gibberish_max_freq"]
    checks: dict[str, torch.Tensor] = {
        f"fires_on_retain (freq_retain > retain_max_freq={r_max})": freq["retain"] > r_max,
        **{f"fires_on_{r} (> retain_max_freq={r_max})": freq[r] > r_max for r in neighbours},
        f"rare_on_forget (freq_forget < min_forget_freq={f_min})": freq["forget"] < f_min,
    }
    thresholds = {"retain_max_freq": r_max, "min_forget_freq": f_min}
    extra: dict[str, torch.Tensor] = {}
    if method == "frequency":
        score = freq["forget"].clone()
        score_doc = "freq_forget"
    elif method == "semantic":
        checks[f"rare_on_romanized (freq_forget_romanized < min_forget_freq={f_min})"] = freq["forget_romanized"] < f_min
        checks[f"fires_on_gibberish (freq_gibberish > gibberish_max_freq={g_max})"] = freq["gibberish"] > g_max
        thresholds["gibberish_max_freq"] = g_max
        score = (torch.minimum(freq["forget"], freq["forget_romanized"])
                 - torch.maximum(freq["gibberish"], retain_like))
        score_doc = "min(freq_forget, freq_forget_romanized) - max(freq_gibberish, max(freq_retain, freq_neighbours))"
    else:
        if model is None or tok is None or not forget_texts:
            raise ConfigError("features.method 'gradient' needs the model, its tokenizer and forget texts")
        n_texts = cfg["gradient_texts"]
        score, n_tok = attribution(model, tok, layer, sae, forget_texts[:n_texts], max_length=max_length,
                                   batch_size=batch_size, desc="attribution (forget)")
        extra["attribution_tokens_forget"] = torch.tensor(float(n_tok))
        if retain_texts:
            extra["retain_score"], n_ret = attribution(model, tok, layer, sae, retain_texts[:n_texts],
                                                       max_length=max_length, batch_size=batch_size,
                                                       desc="attribution (retain)")
            extra["attribution_tokens_retain"] = torch.tensor(float(n_ret))
        checks["ablation_does_not_raise_forget_loss (score <= 0)"] = score <= 0
        thresholds["gradient_texts"] = n_texts
        score_doc = ("estimated increase of the forget next-token loss (nats/token) when the latent is ablated: "
                     "-mean over forget tokens of z_i * (dL/dh . W_dec[i])")
    rejected_mask = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for mask in checks.values():
        rejected_mask |= mask
    # the filters a control latent must pass too: firing where the target must not be
    exclusion = {reason: mask for reason, mask in checks.items() if reason.startswith("fires_on_")}
    candidates = (~rejected_mask).nonzero().flatten().tolist()
    rejected = {reason: int(mask.sum()) for reason, mask in checks.items()}
    if not candidates:
        fails = torch.stack(list(checks.values())).sum(0)
        near = min(range(sae.cfg.d_sae), key=lambda i: (int(fails[i]), -float(score[i]), i))
        why = [reason.split(" ")[0] for reason, mask in checks.items() if mask[near]]
        raise SAEError(
            f"feature selection ({method}) at layer {layer} kept none of the {sae.cfg.d_sae} latents: "
            + "; ".join(f"{n} {reason}" for reason, n in rejected.items())
            + f". Nearest miss: latent {near} (score {float(score[near]):.4g}, freq_forget "
            + f"{float(freq['forget'][near]):.4f}, max retain/neighbour freq {float(retain_like[near]):.4f}"
            + (f", freq_forget_romanized {float(freq['forget_romanized'][near]):.4f}, freq_gibberish "
               f"{float(freq['gibberish'][near]):.4f}" if method == "semantic" else "")
            + f") fails {', '.join(why)}"
            + ". Loosen features.retain_max_freq / features.min_forget_freq"
            + (" / features.gibberish_max_freq" if method == "semantic" else "")
            + (" (or give features.gradient_texts more texts)" if method == "gradient" else "")
            + ", or train a wider SAE (sae.expansion) with more tokens (sae.train_tokens)")
    # highest score first; ties: lower retain/neighbour frequency, then lower index
    candidates.sort(key=lambda i: (-float(score[i]), float(retain_like[i]), i))
    # the latents a control may be drawn from (before the chosen ones are taken out of them)
    eligible = freq["forget"] > 0
    for mask in exclusion.values():
        eligible &= ~mask
    n_features = derive_n_features(cfg["n_features"], candidates, eligible, method=method, layer=layer,
                                   d_sae=sae.cfg.d_sae)
    chosen = candidates[:n_features["used"]]
    features = []
    for i in chosen:
        row = {"index": int(i), "score": float(score[i]), "freq_forget": float(freq["forget"][i]),
               "freq_retain": float(freq["retain"][i]),
               "freq_neighbours": {r[len("neighbour_"):]: float(freq[r][i]) for r in neighbours}}
        for role in ("forget_romanized", "gibberish"):
            if role in freq:
                row[f"freq_{role}"] = float(freq[role][i])
        if "retain_score" in extra:
            row["retain_score"] = float(extra["retain_score"][i])
        features.append(row)
    alive = (torch.stack(list(freq.values())).max(0).values > 0).nonzero().flatten().tolist()
    eligible[chosen] = False
    pool_idx = eligible.nonzero().flatten().tolist()
    pool = {"filters": sorted(exclusion), "requires": "freq_forget > 0 (fires on forget)", "excludes": "the chosen latents",
            "index": pool_idx, "freq_forget": [float(freq["forget"][i]) for i in pool_idx],
            "freq_retain": [float(freq["retain"][i]) for i in pool_idx],
            "freq_neighbours": {r[len("neighbour_"):]: [float(freq[r][i]) for i in pool_idx] for r in neighbours}}
    if method == "semantic":
        pool["freq_gibberish"] = [float(freq["gibberish"][i]) for i in pool_idx]
    out = {"method": method, "layer": int(layer), "d_sae": int(sae.cfg.d_sae), "features": features,
           "n_selected": len(features), "n_candidates": len(candidates), "rejected": rejected, "alive": alive,
           "thresholds": {**thresholds, "n_features": cfg["n_features"]}, "n_features": n_features, "score": score_doc,
           "tokens": {role: int(a.shape[0]) for role, a in cache.acts.items()}, "seed": seed,
           "control_pool": pool}
    for key in ("attribution_tokens_forget", "attribution_tokens_retain"):
        if key in extra:
            out[key] = int(extra[key])
    log.info("layer %d, %s: %d candidates of %d latents, %d selected (top score %.4g); rejected %s; "
             "%d latents in the random control's pool", layer, method, len(candidates), sae.cfg.d_sae, len(features),
             features[0]["score"], rejected, len(pool_idx))
    return out


def derive_n_features(requested: int, candidates: list[int], eligible: torch.Tensor, *, method: str, layer: int,
                      d_sae: int) -> dict:
    """How many latents a layer's gate takes: the most, up to ``requested`` (features.n_features) and
    the number of ``candidates`` (sorted best first), whose forget-frequency-matched random control
    can still be drawn — the control needs as many latents outside the chosen ones among the
    ``eligible`` latents (fire on forget, pass the exclusion filters; a boolean mask over the SAE's
    latents, chosen ones included). Returns ``{requested, used, limited_by, candidates, eligible,
    pool}``: ``limited_by`` is ``requested``, ``candidates`` or ``control_pool``; ``pool`` is the
    control pool left once the ``used`` best candidates are taken. No latent choosable with a
    control is an SAEError naming the settings to change (the choosing step fails, not the
    evaluation after it)."""
    n_eligible = int(eligible.sum())
    taken_eligible = [0]          # taken_eligible[k]: eligible latents among the best k candidates
    for i in candidates:
        taken_eligible.append(taken_eligible[-1] + int(bool(eligible[i])))
    top = min(requested, len(candidates))
    used = next((k for k in range(top, 0, -1) if n_eligible - taken_eligible[k] >= k), 0)
    if used == 0:
        raise SAEError(
            f"feature selection ({method}) at layer {layer}: {len(candidates)} latents pass the filters, but no latent "
            f"can be chosen with a random control: the control (random_gate, the gate's dose-response sweep) draws "
            f"as many latents that are not chosen, fire on forget and pass the same exclusion filters, and only "
            f"{n_eligible} of the {d_sae} latents do. Loosen features.retain_max_freq"
            f"{' / features.gibberish_max_freq' if method == 'semantic' else ''}, or train a wider SAE "
            f"(sae.expansion) on more tokens (sae.train_tokens, layers.activations.max_texts); "
            f"features.n_features is {requested}")
    limited_by = "requested" if used == requested else "candidates" if used == len(candidates) else "control_pool"
    out = {"requested": int(requested), "used": int(used), "limited_by": limited_by, "candidates": len(candidates),
           "eligible": n_eligible, "pool": n_eligible - taken_eligible[used]}
    if limited_by != "requested":
        log.warning("layer %d, %s: %d latents chosen instead of features.n_features=%d (%s)", layer, method, used,
                    requested, explain_n_features(out))
    return out


def explain_n_features(n: dict) -> str:
    """One sentence on how many latents a layer's gate took and why (``select_features``'s ``n_features``)."""
    if n["limited_by"] == "requested":
        return f"{n['used']} latents, as features.n_features asks"
    if n["limited_by"] == "candidates":
        return (f"{n['used']} latents instead of the {n['requested']} features.n_features asks: only {n['candidates']} "
                f"pass the selection filters")
    return (f"{n['used']} latents instead of the {n['requested']} features.n_features asks: only {n['eligible']} latents "
            f"fire on forget and pass the exclusion filters, and the forget-frequency-matched random control needs as "
            f"many latents outside the chosen ones as the gate takes (the control pool then holds {n['pool']})")


def ks_distance(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs."""
    if not a or not b:
        raise ValueError("ks_distance needs two non-empty samples")
    a, b = sorted(a), sorted(b)
    return max(abs(bisect.bisect_right(a, v) / len(a) - bisect.bisect_right(b, v) / len(b)) for v in a + b)


def matched_random(feats: dict, seed: int, *, strata: int = CONTROL_STRATA) -> tuple[list[int], dict]:
    """As many latents as ``feats["features"]`` (one layer's ``select_features`` result), drawn from
    its ``control_pool`` so that their forget firing frequencies match the chosen latents'.

    Strata: ``s = min(strata, n_chosen)`` forget-frequency intervals cut at the chosen frequencies'
    quantiles (edge j = the ⌈j·n/s⌉-th smallest chosen frequency; a latent with frequency f is in the
    first stratum whose edge is ≥ f; the lowest and highest strata are open-ended, so every pool
    latent falls in one). Each stratum draws as many pool latents as it holds chosen ones, uniformly
    without replacement. A stratum with too few pool latents takes the rest from the nearest stratum
    that still has some (lower one first at equal distance); that widening is recorded. With
    ``frequency`` selection the chosen latents are the most forget-frequent ones that pass the
    filters, so the pool sits below them and the upper strata always widen: the KS distance says how
    far the control is from a match. A pool smaller than the number of chosen latents is an error.

    Deterministic given ``seed`` and the layer (``random.Random(seed * 7919 + layer)``). Returns the
    sorted latent indices and what to record: the strata, per-stratum counts, the widenings, both
    frequency distributions and their KS distance."""
    layer = int(feats["layer"])
    pool = feats.get("control_pool")
    if pool is None:
        raise SAEError(f"the features of layer {layer} carry no control_pool (written by an older mmie): rerun "
                       f"select_features for layer {layer} so random_gate can draw a matched control")
    chosen = {int(f["index"]): float(f["freq_forget"]) for f in feats["features"]}
    cand = sorted(zip((int(i) for i in pool["index"]), (float(f) for f in pool["freq_forget"]), strict=True))
    overlap = sorted(set(chosen) & {i for i, _ in cand})
    if overlap:
        raise SAEError(f"the control pool of layer {layer} contains chosen latents {overlap[:5]}: the features "
                       f"file is inconsistent; rerun select_features")
    n = len(chosen)
    if n == 0:
        raise SAEError(f"layer {layer}: no chosen latents to match a random control to")
    if len(cand) < n:
        raise SAEError(
            f"layer {layer}: the random control (random_gate) needs {n} latents besides the {n} chosen ones, but only "
            f"{len(cand)} other latents fire on forget and pass the filters the chosen ones passed "
            f"({'; '.join(pool['filters'])}). Lower features.n_features (the real gate then uses fewer latents too), "
            f"loosen features.retain_max_freq"
            f"{' / features.gibberish_max_freq' if feats.get('method') == 'semantic' else ''}, or train a wider SAE on "
            f"more tokens (sae.expansion, sae.train_tokens)")
    freqs = sorted(chosen.values())
    s = min(strata, n)
    edges = [freqs[-(-j * n // s) - 1] for j in range(1, s)]
    quota = [0] * s
    for f in freqs:
        quota[bisect.bisect_left(edges, f)] += 1
    members: list[list[int]] = [[] for _ in range(s)]
    pool_freq = dict(cand)
    for i, f in cand:
        members[bisect.bisect_left(edges, f)].append(i)
    rng = random.Random(seed * 7919 + layer)
    drawn: list[list[int]] = []
    for k in range(s):
        drawn.append(rng.sample(members[k], min(quota[k], len(members[k]))))
    taken = {i for part in drawn for i in part}
    left = [[i for i in members[k] if i not in taken] for k in range(s)]
    widened: list[dict[str, Any]] = []
    for k in range(s):
        short = missing = quota[k] - len(drawn[k])
        if short <= 0:
            continue
        filled: list[dict] = []
        for d in range(1, s):
            for t in (k - d, k + d):
                if short and 0 <= t < s and left[t]:
                    take = rng.sample(left[t], min(short, len(left[t])))
                    gone = set(take)
                    left[t] = [i for i in left[t] if i not in gone]
                    drawn[k] += take
                    filled.append({"stratum": t, "latents": len(take)})
                    short -= len(take)
        if short:  # cannot happen: the pool holds at least n latents and the strata cover it
            raise SAEError(f"layer {layer}: the random control is {short} latents short in stratum {k}")
        widened.append({"stratum": k, "short": missing, "filled_from": filled})
    picked = sorted(i for part in drawn for i in part)
    rand_freqs = sorted(pool_freq[i] for i in picked)
    rand_per_stratum = [0] * s
    for f in rand_freqs:
        rand_per_stratum[bisect.bisect_left(edges, f)] += 1
    bounds = [None, *edges, None]
    record = {
        "draw": "forget-frequency-matched random latents (mmie.sae.features.matched_random)", "seed": seed,
        "strata": [{"stratum": k, "freq_forget_above": bounds[k], "freq_forget_at_most": bounds[k + 1],
                    "chosen": quota[k], "pool": len(members[k]), "random": rand_per_stratum[k]} for k in range(s)],
        "widened": widened, "pool_size": len(cand), "pool_filters": pool["filters"], "pool_requires": pool["requires"],
        "chosen_freq_forget": freqs, "random_freq_forget": rand_freqs, "ks_distance": ks_distance(freqs, rand_freqs),
    }
    if widened:
        log.warning("layer %d random control: %d of %d latents drawn from a neighbouring forget-frequency stratum "
                    "(too few eligible latents in strata %s); KS distance to the chosen frequencies %.3f", layer,
                    sum(w["short"] for w in widened), n, [w["stratum"] for w in widened], record["ks_distance"])
    return picked, record
