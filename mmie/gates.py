"""Confidence intervals, gates and decisions (METHOD §8) from the per-prompt values kept in every
metrics.json. A gate passes only when its one-sided test, corrected for multiple testing over the
arm's gates, rejects "the arm misses the threshold" at level ``alpha``; a missing metric is a failing
gate with its reason, never a pass."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
from scipy.stats import rankdata

from mmie import io
from mmie.stats import Sample, adjust, hierarchical_ci, paired_margin

log = logging.getLogger(__name__)

# metric -> (numerator key, denominator key or None for a mean, transform)
RATIO_METRICS = {
    "target_rate": ("target", None, "identity"),
    "es": ("es", None, "identity"),
    "target_script_share": ("target_letters", "letters", "identity"),
    "target_rate_romanized": ("target_romanized", None, "identity"),
    "es_romanized": ("es_romanized", None, "identity"),
    "own_language_rate": ("own_language", None, "identity"),
    "ppl": ("ref_nll", "ref_tokens", "exp"),
    "gen_ppl_base": ("gen_nll_base", "gen_tokens", "exp"),
    "token_kl": ("kl", "kl_tokens", "identity"),
    "empty_share": ("empty", None, "identity"),
    "comprehension_rate": ("comprehension", None, "identity"),
    "judge_target_rate": ("judge_target", None, "identity"),
    "yes_no_accuracy": ("yes_no_correct", None, "identity"),
    "yes_no_unparsed_share": ("yes_no_unparsed", None, "identity"),
    "repetitive_share": ("repetitive", None, "identity"),
    "fluency_entropy": ("entropy", "_entropy_den", "identity"),
}
AUC_METRICS = {"mia_auc": "mink_pp", "mia_auc_loss": "loss_score"}


class Results:
    """Every job's metrics.json, indexed by (arm, set) -> {seed: record}."""

    def __init__(self, paths: list[str]) -> None:
        self.by: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
        for p in paths:
            m = io.read_json(p)
            self.by[(m["arm"], m["set"])][int(m["seed"])] = m

    def sample(self, arm: str, set_name: str, metric: str, seeds: list[int]) -> tuple[Sample | None, str | None]:
        """Per-seed per-prompt arrays of ``metric`` ordered by prompt id, or (None, reason)."""
        recs = self.by.get((arm, set_name), {})
        missing = [s for s in seeds if s not in recs]
        if missing:
            return None, f"no metrics.json for {arm}/{set_name} seeds {missing}"
        for s in seeds:
            if metric in recs[s]["failures"]:
                return None, f"{arm}/seed{s}/{set_name}: {recs[s]['failures'][metric]}"
            if metric not in recs[s]["metrics"]:
                return None, f"{arm}/seed{s}/{set_name}: metric {metric} was not computed"
        if metric.startswith("lang_share_"):
            label = metric.removeprefix("lang_share_")
            nums = [self._ordered(recs[s], "label") for s in seeds]
            nums = [np.array([lab == label for lab in n], float) for n in nums]
            return Sample(nums, [np.ones(len(n)) for n in nums]), None
        if metric not in RATIO_METRICS:
            return None, f"metric {metric} has no per-prompt form"
        num_key, den_key, transform = RATIO_METRICS[metric]
        nums, dens = [], []
        for s in seeds:
            if num_key == "entropy":
                ent = self._ordered(recs[s], "entropy")
                nums.append(np.array([0.0 if e is None else e for e in ent], float))
                dens.append(np.array([0.0 if e is None else 1.0 for e in ent], float))
                continue
            nums.append(np.asarray(self._ordered(recs[s], num_key), float))
            dens.append(np.asarray(self._ordered(recs[s], den_key), float) if den_key else np.ones(len(nums[-1])))
        return Sample(nums, dens, transform), None

    @staticmethod
    def _ordered(rec: dict, key: str) -> list:
        per = rec["per_prompt"]
        order = np.argsort(per["id"])
        return [per[key][i] for i in order]

    def auc_rows(self, arm: str, metric: str, seeds: list[int]):
        recs = self.by.get((arm, "forget"), {})
        if any(s not in recs or "mia" not in recs[s] for s in seeds):
            return None, f"no membership scores for {arm} (forget set)"
        out = []
        for s in seeds:
            mia = recs[s]["mia"]
            order = np.argsort(mia["id"])
            score = np.asarray(mia[AUC_METRICS[metric]], float)[order]
            member = np.asarray(mia["member"], int)[order]
            out.append((score[member == 1], score[member == 0]))
        return out, None


def _auc_reps(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC per row of (B × n_pos) and (B × n_neg) score matrices, via ranks (ties count half)."""
    both = np.concatenate([pos, neg], axis=1)
    ranks = rankdata(both, axis=1)
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_bootstrap(arm_rows, base_rows, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """Hierarchical bootstrap of the seed-mean AUC for the arm (and, paired, for base)."""
    rng = np.random.default_rng(seed)
    s = len(arm_rows)
    seeds = rng.integers(0, s, size=(n_boot, s))
    per_seed_arm, per_seed_base = [], []
    for i in range(s):
        pos, neg = arm_rows[i]
        ip = rng.integers(0, len(pos), size=(n_boot, len(pos)))
        ineg = rng.integers(0, len(neg), size=(n_boot, len(neg)))
        per_seed_arm.append(_auc_reps(pos[ip], neg[ineg]))
        if base_rows is not None:
            bpos, bneg = base_rows[i]
            per_seed_base.append(_auc_reps(bpos[ip], bneg[ineg]))
    rows = np.arange(n_boot)[:, None]
    arm = np.stack(per_seed_arm, axis=1)[rows, seeds].mean(axis=1)
    base = np.stack(per_seed_base, axis=1)[rows, seeds].mean(axis=1) if base_rows is not None else None
    point_arm = float(np.mean([_auc_reps(p[None], n[None])[0] for p, n in arm_rows]))
    point_base = float(np.mean([_auc_reps(p[None], n[None])[0] for p, n in base_rows])) if base_rows else float("nan")
    return arm, base, point_arm, point_base


def intervals(results: Results, arms: list[str], sets: list[str], seeds: list[int], cfg: dict) -> list[dict]:
    """95% hierarchical-bootstrap CI for every arm × set × metric with per-prompt values."""
    rows = []
    for arm in arms:
        for set_name in sets:
            recs = results.by.get((arm, set_name), {})
            if not recs:
                continue
            metrics = sorted(set().union(*(r["metrics"].keys() for r in recs.values())))
            for metric in metrics:
                if metric in AUC_METRICS:
                    data, reason = results.auc_rows(arm, metric, seeds)
                    if data is None:
                        continue
                    reps, _, point, _ = auc_bootstrap(data, None, cfg["n_boot"], cfg["rng_seed"])
                    lo, hi = np.quantile(reps, [(1 - cfg["level"]) / 2, 1 - (1 - cfg["level"]) / 2])
                    rows.append({"arm": arm, "set": set_name, "metric": metric, "estimate": point, "ci_low": float(lo),
                                 "ci_high": float(hi), "n_boot": cfg["n_boot"], "rng_seed": cfg["rng_seed"],
                                 "n_seeds": len(seeds)})
                    continue
                sample, reason = results.sample(arm, set_name, metric, seeds)
                if sample is None:
                    continue
                ci = hierarchical_ci(sample, cfg["n_boot"], cfg["rng_seed"], cfg["level"])
                rows.append({"arm": arm, "set": set_name, "metric": metric, **ci})
    return rows


def expand_gates(gates: list[dict], neighbours: list[str]) -> list[dict]:
    """A gate on set 'neighbours' becomes one gate per neighbour language."""
    out = []
    for g in gates:
        if g["set"] == "neighbours":
            out += [{**g, "set": code, "name": f"{g['name']}[{code}]"} for code in neighbours]
        else:
            out.append(g)
    return out


def evaluate_gate(results: Results, arm: str, gate: dict, seeds: list[int], cfg: dict) -> dict:
    row = {"arm": arm, "gate": gate["name"], "metric": gate["metric"], "set": gate["set"],
           "direction": gate["direction"], "relative": gate["relative"], "factor": gate["threshold"],
           "value": None, "threshold": None, "ci_low": None, "ci_high": None, "p_value": None, "reason": ""}
    metric, set_name = gate["metric"], gate["set"]
    if metric in AUC_METRICS:
        arm_rows, reason = results.auc_rows(arm, metric, seeds)
        base_rows, reason_b = results.auc_rows("base", metric, seeds)
        if arm_rows is None or base_rows is None:
            row["reason"] = f"missing metric: {reason or reason_b}"
            return row
        a, b, pa, pb = auc_bootstrap(arm_rows, base_rows, cfg["n_boot"], cfg["rng_seed"])
        res = _margin_from_reps(a, b, pa, pb, gate)
    else:
        sa, reason = results.sample(arm, set_name, metric, seeds)
        sb, reason_b = results.sample("base", set_name, metric, seeds)
        if sa is None or sb is None:
            row["reason"] = f"missing metric: {reason or reason_b}"
            return row
        try:
            if gate["direction"] == "within":
                res = _within(sa, sb, gate, cfg)
            else:
                res = paired_margin(sa, sb, relative=gate["relative"], factor=gate["threshold"], n_boot=cfg["n_boot"],
                                    seed=cfg["rng_seed"], level=cfg["level"])
                res["p"] = res["p_below"] if gate["direction"] == "<=" else res["p_above"]
        except ValueError as err:
            row["reason"] = f"cannot compare with base: {err}"
            return row
    if not np.isfinite(res["value"]) or not np.isfinite(res["threshold"]):
        row["reason"] = f"non-finite value ({res['value']}) or threshold ({res['threshold']})"
        return row
    row.update(value=res["value"], threshold=res["threshold"], ci_low=res["ci_low"], ci_high=res["ci_high"],
               p_value=res["p"])
    return row


def _within(sa: Sample, sb: Sample, gate: dict, cfg: dict) -> dict:
    """|arm − base| ≤ δ by two one-sided tests (TOST)."""
    d = gate["threshold"]
    up = paired_margin(sa, sb, relative="delta", factor=d, n_boot=cfg["n_boot"], seed=cfg["rng_seed"], level=cfg["level"])
    lo = paired_margin(sa, sb, relative="delta", factor=-d, n_boot=cfg["n_boot"], seed=cfg["rng_seed"], level=cfg["level"])
    diff_lo, diff_hi = up["ci_low"] + d, up["ci_high"] + d
    return {"value": up["value"], "threshold": d, "ci_low": diff_lo, "ci_high": diff_hi,
            "p": max(up["p_below"], lo["p_above"])}


def _margin_from_reps(a: np.ndarray, b: np.ndarray, pa: float, pb: float, gate: dict) -> dict:
    d = gate["threshold"]
    if gate["direction"] == "within":
        diff = a - b
        p = max((np.sum(diff - d >= 0) + 1) / (len(diff) + 1), (np.sum(diff + d <= 0) + 1) / (len(diff) + 1))
        lo, hi = np.quantile(diff, [0.025, 0.975])
        return {"value": pa, "threshold": d, "ci_low": float(lo), "ci_high": float(hi), "p": float(p)}
    thr = d * b if gate["relative"] == "ratio" else b + d
    g = a - thr
    p = (np.sum(g >= 0) + 1) / (len(g) + 1) if gate["direction"] == "<=" else (np.sum(g <= 0) + 1) / (len(g) + 1)
    lo, hi = np.quantile(g, [0.025, 0.975])
    point_thr = d * pb if gate["relative"] == "ratio" else pb + d
    return {"value": pa, "threshold": point_thr, "ci_low": float(lo), "ci_high": float(hi), "p": float(p)}


def decide(results: Results, arms: list[str], gates: list[dict], seeds: list[int], cfg: dict) -> tuple[list[dict], dict]:
    """Gate rows for every non-base arm and the decision per arm."""
    rows, decisions = [], {}
    for arm in arms:
        if arm == "base":
            continue
        arm_rows = [evaluate_gate(results, arm, g, seeds, cfg) for g in gates]
        tested = [r for r in arm_rows if r["p_value"] is not None]
        for r, p_adj in zip(tested, adjust([r["p_value"] for r in tested], cfg["correction"]), strict=True):
            r["p_adjusted"] = p_adj
            r["passed"] = bool(p_adj < cfg["alpha"])
            if not r["passed"]:
                r["reason"] = (f"not supported at alpha={cfg['alpha']} after {cfg['correction']} correction "
                               f"(value {r['value']:.4g} vs threshold {r['threshold']:.4g}, adjusted p {p_adj:.3g})")
        for r in arm_rows:
            if r["p_value"] is None:
                r["p_adjusted"], r["passed"] = None, False
        failing = [r["gate"] for r in arm_rows if not r["passed"]]
        decisions[arm] = {"decision": "PROCEED" if not failing else "STOP", "failing": failing,
                          "reasons": {r["gate"]: r["reason"] for r in arm_rows if not r["passed"]}}
        rows += arm_rows
    return rows, decisions
