"""Layer selection (METHOD §7): which decoder layers carry the target language.

Per candidate layer and per resample (stability selection):
- *separability*: cross-validated AUC of a linear probe on masked mean-pooled activations, target vs
  retain and target vs neighbours, mapped to [0, 1] as ``2·(AUC − 0.5)`` (floored at 0) and averaged;
- *causal*: the relative drop in target rate on a small forget prompt set when the resample's
  difference-in-means direction (target − retain) is ablated at that layer during generation;
- optionally the *judge's* relative drop on the same outputs (``layers.selection.judge_weight``);
- combined: the weighted mean of those scores. Each resample votes for its ``n_layers`` best
  layers; the layers with the most votes are chosen (ties: higher mean score).

The artifact holds every score of every resample, the votes, the base rates and the choice."""

from __future__ import annotations

import logging
import random
import time

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


def vote(scores: list[dict[int, float]], n_layers: int) -> dict[int, int]:
    """Each resample's top ``n_layers`` layers get one vote (ties by lower layer index)."""
    votes: dict[int, int] = {}
    for per_layer in scores:
        for layer in sorted(per_layer, key=lambda ly: (-per_layer[ly], ly))[:n_layers]:
            votes[layer] = votes.get(layer, 0) + 1
    return votes


def choose(votes: dict[int, int], mean_score: dict[int, float], n_layers: int) -> list[int]:
    ranked = sorted(mean_score, key=lambda ly: (-votes.get(ly, 0), -mean_score[ly], ly))
    return sorted(ranked[:n_layers])


def forced(config: dict) -> dict:
    layers = [int(x) for x in config["layers"]["force_layers"]]
    return {"forced": True, "layers": layers, "reason": "layers.force_layers is set: selection bypassed",
            "candidates": None, "resamples": [], "votes": {}, "mean_scores": {}}


def select(config: dict, lm, data: dict[str, list[str]], prompts: list[dict], lid, judge=None) -> dict:
    """Run the selection on a loaded model. ``data``: texts of roles ``target``, ``retain`` and
    ``neighbours``; ``prompts``: forget prompts ({id, prompt}) for the causal score; ``lid``: the
    language identifier; ``judge``: a ``mmie.judge.Judge`` when judge-assisted."""
    from mmie.activations import collect
    from mmie.edits import ablate
    from mmie.generation import Decoding, generate
    from mmie.hooks import check_layers, decoder_layers, edit_layer_outputs

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
            raise ConfigError(f"layer selection needs at least 4 {role} texts (have {len(texts)})")
        pooled[role] = {ly: a.numpy() for ly, (a, _) in collect(
            model, tok, texts, candidates, max_length=act["max_length"], batch_size=act["batch_size"],
            pooled=True, desc=f"pooled {role}").items()}
    dec = Decoding.from_config(config["generation"])
    dec = Decoding(**{**dec.__dict__, "max_new_tokens": sel["causal_max_new_tokens"],
                      "min_new_tokens": min(dec.min_new_tokens, sel["causal_max_new_tokens"])})

    def rates(outputs: list[str]) -> dict[str, float]:
        out = {"lid": float(np.mean([lid.is_target(lid.identify(o)[0]) for o in outputs]))}
        if judge is not None:
            out["judge"] = float(np.mean(judge.score(outputs)))
        return out

    base_out = [g["output"] for g in generate(model, tok, prompts, dec, seed=0, desc="causal: base")]
    base = rates(base_out)
    if base["lid"] == 0:
        raise ModelError("layer selection: the model writes no target-language text on the forget prompts, so "
                         "the causal score is undefined; choose layers yourself with layers.force_layers")
    resamples = []
    for r in range(sel["resamples"]):
        rng = random.Random(config["data"]["seed"] * 1000 + r)
        idx = {role: sorted(rng.sample(range(len(t)), max(2, int(round(sel["sample_fraction"] * len(t))))))
               for role, t in data.items()}
        per_layer = {}
        for ly in candidates:
            x = {role: pooled[role][ly][idx[role]] for role in data}
            auc_r = probe_auc(x["target"], x["retain"], sel["cv_folds"], seed=r)
            auc_n = probe_auc(x["target"], x["neighbours"], sel["cv_folds"], seed=r)
            direction = torch.from_numpy(x["target"].mean(0) - x["retain"].mean(0))
            with edit_layer_outputs(model, {ly: ablate(direction)}):
                outs = [g["output"] for g in generate(model, tok, prompts, dec, seed=0, desc=f"causal r{r} L{ly}")]
            got = rates(outs)
            row = {"auc_target_vs_retain": auc_r, "auc_target_vs_neighbours": auc_n,
                   "separability": (separability(auc_r) + separability(auc_n)) / 2,
                   "target_rate_ablated": got["lid"], "causal": (base["lid"] - got["lid"]) / base["lid"]}
            if judge is not None:
                row["judge_rate_ablated"] = got["judge"]
                row["judge"] = (base["judge"] - got["judge"]) / base["judge"] if base["judge"] > 0 else 0.0
            row["score"] = sum(w * max(0.0, row.get(k, 0.0)) for k, w in weights.items()) / sum(weights.values())
            per_layer[ly] = row
            log.info("resample %d layer %d: %s", r, ly, {k: round(v, 3) for k, v in row.items()})
        resamples.append(per_layer)
    scores = [{ly: row["score"] for ly, row in per.items()} for per in resamples]
    votes = vote(scores, sel["n_layers"])
    mean_score = {ly: float(np.mean([s[ly] for s in scores])) for ly in candidates}
    chosen = choose(votes, mean_score, sel["n_layers"])
    share = {ly: votes.get(ly, 0) / len(resamples) for ly in candidates}
    unstable = [ly for ly in chosen if share[ly] < sel["min_vote_share"]]
    if unstable:
        log.warning("chosen layers %s have a vote share below layers.selection.min_vote_share=%s: the choice "
                    "is unstable across resamples", unstable, sel["min_vote_share"])
    return {"forced": False, "layers": chosen, "candidates": candidates, "weights": weights,
            "base_rates": base, "prompts": len(prompts),
            "resamples": [{str(ly): row for ly, row in per.items()} for per in resamples],
            "votes": {str(ly): votes.get(ly, 0) for ly in candidates},
            "vote_share": {str(ly): share[ly] for ly in candidates},
            "mean_scores": {str(ly): mean_score[ly] for ly in candidates},
            "unstable": unstable, "seconds": round(time.time() - t0, 1)}
