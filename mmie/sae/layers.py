"""Layer selection (docs/method.md §7): which decoder layers carry the target language.

Everything here reads **dev** texts only (forget/dev, retain/dev, neighbours/<code>/dev): the choice
is made without the evaluation sets. Each resample ``r`` (seeded by ``data.seed`` and ``r``) draws
a random ``sample_fraction`` of every role's dev texts without replacement (the *fit half*); the
rest is the resample's *held half*. Per candidate layer and resample:

- *separability*: cross-validated AUC of a linear probe on masked mean-pooled activations of the fit
  half, target vs retain and target vs neighbours, mapped to [0, 1] as ``2·(AUC − 0.5)`` (floored
  at 0) and averaged;
- *causal* (continuous): the difference-in-means direction (target − retain, fit half) is ablated
  at the layer, and the held half's texts are scored token by token. ``lost = 1 − exp(−Δ)`` where
  Δ is the rise in mean negative log-likelihood per token (nats) under the ablation: the share of
  per-token probability mass the language loses. ``causal = lost_target − lost_retain``: an
  ablation that wrecks every language is not a language-specific layer;
- optionally the *judge's* relative drop in target rate on generations from the held target texts'
  prefixes (``layers.selection.judge_weight``);
- ``score``: the weighted mean of those (negative parts floored at 0).

Stability (``stability``): in each resample the ``n_layers`` best layers get one vote; layers tied
at the cut share the open slots (fractional votes: never broken by order). A layer's *frequency*
is its share of the votes over resamples. Layers are ranked by frequency, then mean score, then
index; the artifact reports the margin between the last chosen layer and the runner-up, whether the
ranking needed the mean score (``tie_broken_by: mean_score``) or was a true tie in frequency and mean
score (``tie: true``, broken by the lower layer index), and ``stable``: every chosen layer has a
frequency of at least ``stability_floor`` and there is no true tie."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import numpy as np
import torch

from mmie.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


def probe_auc(x_pos: np.ndarray, x_neg: np.ndarray, folds: int, seed: int) -> float:
    """Cross-validated ROC AUC of a standardised logistic-regression probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([x_pos, x_neg])
    y = np.concatenate([np.ones(len(x_pos)), np.zeros(len(x_neg))])
    folds = min(folds, len(x_pos), len(x_neg))
    if folds < 2:
        raise ValueError(f"a probe needs at least 2 examples per class (have {len(x_pos)} and {len(x_neg)})")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=cv, scoring="roc_auc").mean())


def separability(auc: float) -> float:
    return max(0.0, 2.0 * (auc - 0.5))


def mass_lost(nll_base: float, nll_ablated: float, tokens: int) -> float:
    """Share of per-token probability mass lost under an ablation: ``1 − exp(−Δ)``, Δ the rise in
    mean NLL per token (negative when the ablation makes the texts more likely)."""
    if tokens <= 0:
        raise ValueError("no scored tokens")
    return 1.0 - math.exp(-(nll_ablated - nll_base) / tokens)


def stability(scores: list[dict[int, float]], n_layers: int, floor: float, tol: float = 1e-9) -> dict:
    """Votes, frequencies, ranking, margin, ties and ``stable`` from per-resample scores
    ({layer: score} per resample). See the module doc for the rules."""
    if not scores:
        raise ValueError("no resamples to vote on")
    candidates = sorted(scores[0])
    if n_layers > len(candidates):
        raise ConfigError(f"layers.selection.n_layers={n_layers} but only {len(candidates)} candidate layers")
    votes = dict.fromkeys(candidates, 0.0)
    split_votes = 0
    for per in scores:
        cut = sorted(per.values(), reverse=True)[n_layers - 1]
        above = [ly for ly in candidates if per[ly] > cut + tol]
        at_cut = [ly for ly in candidates if abs(per[ly] - cut) <= tol]
        for ly in above:
            votes[ly] += 1.0
        for ly in at_cut:
            votes[ly] += (n_layers - len(above)) / len(at_cut)
        split_votes += len(at_cut) > n_layers - len(above)
    frequency = {ly: votes[ly] / len(scores) for ly in candidates}
    mean = {ly: float(np.mean([s[ly] for s in scores])) for ly in candidates}
    sd = {ly: float(np.std([s[ly] for s in scores])) for ly in candidates}
    ranking = sorted(candidates, key=lambda ly: (-frequency[ly], -mean[ly], ly))
    chosen = ranking[:n_layers]
    runner = ranking[n_layers] if len(ranking) > n_layers else None
    margin, tie, broken_by = None, False, None
    if runner is not None:
        last = chosen[-1]
        margin = {"last_chosen": last, "runner_up": runner,
                  "frequency": frequency[last] - frequency[runner], "mean_score": mean[last] - mean[runner]}
        if abs(margin["frequency"]) <= tol:
            tie = abs(margin["mean_score"]) <= tol
            broken_by = "layer_index" if tie else "mean_score"
    below = [ly for ly in chosen if frequency[ly] < floor]
    return {"layers": sorted(chosen), "ranking": ranking, "votes": votes, "frequency": frequency,
            "mean_scores": mean, "score_sd": sd, "margin": margin, "tie": tie, "tie_broken_by": broken_by,
            "resamples_with_split_votes": split_votes, "below_floor": below,
            "stable": not below and not tie, "stability_floor": floor}


def forced(config: Mapping) -> dict:
    layers = [int(x) for x in config["layers"]["force_layers"]]
    return {"forced": True, "layers": layers, "reason": "layers.force_layers is set: selection bypassed",
            "candidates": None, "resamples": [], "votes": {}, "frequency": {}, "mean_scores": {},
            "stable": None}


def halves(n: int, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """A random ``fraction`` of ``range(n)`` (at least 2) and the rest, both sorted."""
    perm = rng.permutation(n)
    k = min(n, max(2, int(round(fraction * n))))
    return sorted(int(i) for i in perm[:k]), sorted(int(i) for i in perm[k:])


def select(config: Mapping, lm, data: dict[str, list[str]], judge=None) -> dict:
    """Run the selection on a loaded model. ``data``: dev texts of roles ``target``, ``retain`` and
    ``neighbours``; ``judge``: a ``mmie.lang.judge.Judge`` when judge-assisted."""
    from mmie.model.generation import special_prefix
    from mmie.model.hooks import check_layers, decoder_layers, edit_layer_outputs
    from mmie.model.likelihood import score_sequences
    from mmie.sae.activations import collect, encode_texts
    from mmie.sae.edits import ablate

    sel = config["layers"]["selection"]
    act = config["layers"]["activations"]
    n_total = len(decoder_layers(lm.model))
    candidates = [int(x) for x in (sel["candidates"] or range(n_total))]
    check_layers(lm.model, candidates)
    if sel["n_layers"] > len(candidates):
        raise ConfigError(f"layers.selection.n_layers={sel['n_layers']} but only {len(candidates)} candidate layers")
    weights = {"separability": sel["probe_weight"], "causal": sel["causal_weight"],
               "judge": sel["judge_weight"] if judge is not None else 0.0}
    if sel["judge_weight"] > 0 and judge is None:
        raise ConfigError("layers.selection.judge_weight > 0 needs the judge (judge.enabled: true)")
    if sum(weights.values()) <= 0:
        raise ConfigError("layers.selection: probe_weight, causal_weight (and judge_weight) are all 0")
    model, tok = lm.model, lm.tokenizer
    t0 = time.time()
    pooled = {}
    for role, texts in data.items():
        if len(texts) < 4:
            raise ConfigError(f"layer selection needs at least 4 dev texts of {role} (have {len(texts)}); add data "
                              f"or raise data.split.dev")
        pooled[role] = {ly: a.numpy() for ly, (a, _) in collect(
            model, tok, texts, candidates, max_length=act["max_length"], batch_size=act["batch_size"],
            pooled=True, desc=f"pooled {role}").items()}

    # every target/retain dev text scored once without an edit; each resample sums its held half
    encoded, skip = encode_texts(tok, data["target"] + data["retain"], act["max_length"])
    seqs = {"target": encoded[:len(data["target"])], "retain": encoded[len(data["target"]):]}
    prefix = seqs["target"][0][:skip]

    def nll(role: str, idx: list[int]) -> tuple[list[float], list[int]]:
        rows = score_sequences(model, tok.pad_token_id, [prefix] * len(idx), [seqs[role][i][skip:] for i in idx],
                               batch_size=act["batch_size"], max_length=act["max_length"], desc=f"nll {role}")
        return [r["nll"] for r in rows], [r["tokens"] for r in rows]

    base_nll = {role: nll(role, list(range(len(seqs[role])))) for role in seqs}

    judge_base, dec, prompts = None, None, None
    if judge is not None:
        from mmie.data.corpus import prompt_prefix
        from mmie.model.generation import Decoding, generate

        dec = Decoding.from_config(config["generation"])
        dec = Decoding(**{**dec.__dict__, "max_new_tokens": sel["causal_max_new_tokens"],
                          "min_new_tokens": min(dec.min_new_tokens, sel["causal_max_new_tokens"])})
        prompts = [{"id": str(i), "prompt": prompt_prefix(t, config["eval"]["prompt_fraction"])}
                   for i, t in enumerate(data["target"])]
        judge_base = judge.score([g["output"] for g in generate(model, tok, prompts, dec, seed=0, desc="judge: base")])

    resamples, drawn = [], []
    for r in range(sel["resamples"]):
        rng = np.random.default_rng([int(config["data"]["seed"]), r])
        split = {role: halves(len(t), sel["sample_fraction"], rng) for role, t in data.items()}
        held = {role: split[role][1][:sel["causal_prompts"]] for role in ("target", "retain")}
        if not held["target"] or not held["retain"]:
            raise ConfigError(f"layers.selection.sample_fraction={sel['sample_fraction']} leaves no held-out dev "
                              f"texts for the causal score (target {len(data['target'])}, retain "
                              f"{len(data['retain'])} dev texts); lower it (0.5 = half-samples)")
        drawn.append({"fit": {role: split[role][0] for role in data}, "held": held})
        base = {role: (sum(base_nll[role][0][i] for i in held[role]), sum(base_nll[role][1][i] for i in held[role]))
                for role in held}
        per_layer = {}
        for ly in candidates:
            x = {role: pooled[role][ly][split[role][0]] for role in data}
            auc_r = probe_auc(x["target"], x["retain"], sel["cv_folds"], seed=r)
            auc_n = probe_auc(x["target"], x["neighbours"], sel["cv_folds"], seed=r)
            direction = torch.from_numpy(x["target"].mean(0) - x["retain"].mean(0))
            # the same positions the edit arms act on: the special prefix and padding are left alone
            with edit_layer_outputs(model, {ly: ablate(direction)}, skip_prefix=special_prefix(tok)):
                ablated = {role: sum(nll(role, held[role])[0]) for role in held}
                if judge is not None:
                    assert prompts is not None and dec is not None   # set above when there is a judge
                    chosen = [prompts[i] for i in held["target"]]
                    judged = judge.score([g["output"] for g in generate(model, tok, chosen, dec, seed=0,
                                                                        desc=f"judge r{r} L{ly}")])
            lost = {role: mass_lost(base[role][0], ablated[role], base[role][1]) for role in held}
            row = {"auc_target_vs_retain": auc_r, "auc_target_vs_neighbours": auc_n,
                   "separability": (separability(auc_r) + separability(auc_n)) / 2,
                   "mass_lost_target": lost["target"], "mass_lost_retain": lost["retain"],
                   "causal": lost["target"] - lost["retain"]}
            if judge is not None:
                assert judge_base is not None   # set above when there is a judge
                base_rate = float(np.mean([judge_base[i] for i in held["target"]]))
                if base_rate <= 0:
                    raise ModelError(f"layer selection: the judge finds no target language in the base model's "
                                     f"outputs on resample {r}'s dev prompts, so its drop is undefined; set "
                                     f"layers.selection.judge_weight: 0 or choose layers with layers.force_layers")
                row["judge_base_rate"] = base_rate
                row["judge_rate_ablated"] = float(np.mean(judged))
                row["judge"] = (base_rate - row["judge_rate_ablated"]) / base_rate
            row["score"] = sum(w * max(0.0, row.get(k, 0.0)) for k, w in weights.items()) / sum(weights.values())
            per_layer[ly] = row
            log.info("resample %d layer %d: %s", r, ly, {k: round(v, 4) for k, v in row.items()})
        resamples.append(per_layer)
    verdict = stability([{ly: row["score"] for ly, row in per.items()} for per in resamples],
                        sel["n_layers"], sel["stability_floor"], sel["tie_tolerance"])
    if not verdict["stable"]:
        log.warning("layer selection is unstable: chosen %s, frequencies %s, margin %s, tie %s (floor "
                    "layers.selection.stability_floor=%s); consider more dev data, more resamples or "
                    "layers.force_layers", verdict["layers"], verdict["frequency"], verdict["margin"],
                    verdict["tie"], sel["stability_floor"])
    keyed = {k: ({str(ly): v for ly, v in val.items()} if isinstance(val, dict) and k != "margin" else val)
             for k, val in verdict.items()}
    return {"forced": False, **keyed, "candidates": candidates, "weights": weights,
            "dev_texts": {role: len(t) for role, t in data.items()},
            "resamples": [{str(ly): row for ly, row in per.items()} for per in resamples],
            "resample_draws": drawn, "seconds": round(time.time() - t0, 1)}
