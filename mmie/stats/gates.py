"""Confidence intervals, gates and decisions (docs/method.md §8) from the per-prompt values kept in every
metrics.json.

One decision rule. Each gate is a one-sided test at level ``stats.alpha`` of "the arm is on the right
side of its threshold", by a paired comparison with its reference on the same prompts (crossed
bootstrap, mmie/stats/inference.py): the reference is ``base`` (default), the ``oracle`` arm (the model
that never learned the target; a constant ``fallback`` such as 0.5 when the study has none), and the
threshold is ``factor × reference`` (ratio, optionally with an absolute ``floor``), ``reference + delta``
or an ``absolute`` number. An arm PROCEEDs when every gate passes: that is an intersection–union test
(Berger 1982), whose false-PROCEED rate is at most alpha without any multiplicity adjustment (each gate
must be passed on its own); the adjusted p-values of ``stats.correction`` are reported beside it, as
information. The reported interval of a gate is the two-sided 1 − 2·alpha interval of its tested
quantity, whose one side is the test: a gate passes exactly when the interval lies wholly on the right
side; a failing gate's verdict says whether harm was *shown* (wholly on the wrong side) or *not
excluded* (straddling). A missing metric, a set the run does not evaluate, a non-finite value or
threshold are failing gates with their reason (verdict ``missing``), never a pass, and never dropped."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from mmie import io
from mmie.stats.inference import (
    Sample,
    adjust,
    draw,
    hierarchical_ci,
    lower_bound,
    p_at_least,
    p_at_most,
    paired_reps,
    replicates,
    seed_weights,
    threshold_of,
    upper_bound,
)

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
    "comprehension_chrf": ("chrf", None, "identity"),
    "comprehension_chrf_gain": ("chrf_gain", None, "identity"),
    "fluency_ratio": ("fluency_excess", "fluency_tokens", "exp"),
    "judge_target_rate": ("judge_target", None, "identity"),
    "yes_no_accuracy": ("yes_no_correct", None, "identity"),
    "yes_no_unparsed_share": ("yes_no_unparsed", None, "identity"),
    "repetitive_share": ("repetitive", None, "identity"),
    "fluency_entropy": ("entropy", "_entropy_den", "identity"),
}
AUC_METRICS = {"mia_auc": "mink_pp", "mia_auc_loss": "loss_score"}
# metrics that exist only on some sets: metric -> set kinds (mmie.stats.sets.SetInfo.kind)
METRIC_SET_KINDS = {
    "own_language_rate": ("neighbour",),
    "mia_auc": ("forget",), "mia_auc_loss": ("forget",),
    "token_kl": ("retain",),
    "comprehension_chrf": ("comprehension",), "comprehension_chrf_gain": ("comprehension",),
    "yes_no_accuracy": ("yes_no",), "yes_no_unparsed_share": ("yes_no",),
}
# how a failing collapse gate is worded (the metric name stays in the reason)
COLLAPSE = {"empty_share": "outputs are empty", "repetitive_share": "outputs are repetitive"}


def gateable(metric: str, labels: list[str]) -> bool:
    """Whether a gate can name ``metric`` (``labels``: the LID labels, for lang_share_<label>)."""
    if metric.startswith("lang_share_"):
        return metric.removeprefix("lang_share_") in labels
    return metric in RATIO_METRICS or metric in AUC_METRICS


class Results:
    """Every job's metrics.json, indexed by (arm, set) -> {seed: record}."""

    def __init__(self, paths: list[str]) -> None:
        self.by: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
        # (arm, seed) -> the recorded failure of that run (mmie.failures.split), named in missing-data reasons
        self.failed: dict[tuple[str, int], dict] = {}
        # (arm, set, seed) -> why that set has no record although the run did not fail (a failed utility job)
        self.unavailable: dict[tuple[str, str, int], str] = {}
        for p in paths:
            self.add(io.read_json(p))

    def add(self, m: dict) -> None:
        """One metrics.json record (``arm``, ``seed``, ``set``, ``metrics``, ``failures``, ``per_prompt``;
        optionally ``forms``: metric -> (numerator, denominator or None, transform) for a metric that is not
        one of mmie's own, e.g. an lm-eval score from ``mmie.report.utility.records``)."""
        self.by[(m["arm"], m["set"])][int(m["seed"])] = m

    @classmethod
    def from_records(cls, records: list[dict]) -> Results:
        res = cls([])
        for m in records:
            res.add(m)
        return res

    def ids(self, arm: str, set_name: str, seed: int) -> list:
        return sorted(self.by[(arm, set_name)][seed]["per_prompt"]["id"])

    def sample(self, arm: str, set_name: str, metric: str, seeds: list[int]) -> tuple[Sample | None, str | None]:
        """Per-seed per-prompt arrays of ``metric`` ordered by prompt id, or (None, reason)."""
        recs = self.by.get((arm, set_name), {})
        missing = [s for s in seeds if s not in recs]
        if missing:
            gone = [self.unavailable[(arm, set_name, s)] for s in missing if (arm, set_name, s) in self.unavailable]
            if gone:
                return None, "; ".join(gone)
            lost = [self.failed[(arm, s)] for s in missing if (arm, s) in self.failed]
            if lost:
                return None, "; ".join(f"{arm} seed {r['seed']} failed ({r['rule']}: {r['error'][:200]})" for r in lost)
            return None, f"no metrics.json for {arm}/{set_name} seeds {missing}"
        for s in seeds:
            if metric in recs[s]["failures"]:
                return None, f"{arm}/seed{s}/{set_name}: {recs[s]['failures'][metric]}"
            if metric not in recs[s]["metrics"]:
                return None, f"{arm}/seed{s}/{set_name}: metric {metric} was not computed"
        first = self.ids(arm, set_name, seeds[0])
        for s in seeds[1:]:
            if self.ids(arm, set_name, s) != first:
                return None, (f"{arm}/{set_name}: seed {s} was evaluated on other prompts than seed {seeds[0]} "
                              f"(the crossed design needs the same prompts in every seed; rerun the evaluation)")
        if metric.startswith("lang_share_"):
            label = metric.removeprefix("lang_share_")
            labels = [self._ordered(recs[s], "label") for s in seeds]
            nums = [np.array([lab == label for lab in n], float) for n in labels]
            return Sample(nums, [np.ones(len(n)) for n in nums], seeds=tuple(seeds)), None
        form = recs[seeds[0]].get("forms", {}).get(metric) or RATIO_METRICS.get(metric)
        if form is None:
            return None, f"metric {metric} has no per-prompt form"
        num_key, den_key, transform = form
        nums, dens = [], []
        for s in seeds:
            if num_key == "entropy":
                ent = self._ordered(recs[s], "entropy")
                nums.append(np.array([0.0 if e is None else e for e in ent], float))
                dens.append(np.array([0.0 if e is None else 1.0 for e in ent], float))
                continue
            per = recs[s]["per_prompt"]
            if num_key not in per or (den_key and den_key not in per):
                return None, f"{arm}/seed{s}/{set_name}: per-prompt values of {metric} are missing from metrics.json"
            nums.append(np.asarray(self._ordered(recs[s], num_key), float))
            dens.append(np.asarray(self._ordered(recs[s], den_key), float) if den_key else np.ones(len(nums[-1])))
        return Sample(nums, dens, transform, seeds=tuple(seeds)), None

    @staticmethod
    def _ordered(rec: dict, key: str) -> list:
        per = rec["per_prompt"]
        order = np.argsort(per["id"], kind="stable")
        return [per[key][i] for i in order]

    def auc_rows(self, arm: str, metric: str, seeds: list[int]):
        """Per seed (member scores, non-member scores), ordered by id; or (None, reason)."""
        recs = self.by.get((arm, "forget"), {})
        if any(s not in recs or "mia" not in recs[s] for s in seeds):
            return None, f"no membership scores for {arm} (forget set)"
        out, first = [], None
        for s in seeds:
            mia = recs[s]["mia"]
            order = np.argsort(mia["id"], kind="stable")
            ids = [mia["id"][i] for i in order]
            if first is None:
                first = ids
            elif ids != first:
                return None, f"{arm}: membership items differ between seeds (rerun the evaluation)"
            score = np.asarray(mia[AUC_METRICS[metric]], float)[order]
            member = np.asarray(mia["member"], int)[order]
            out.append((score[member == 1], score[member == 0]))
        return out, None


def _auc_reps(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC per row of (B × n_pos) and (B × n_neg) score matrices, via ranks (ties count half)."""
    from scipy.stats import rankdata

    both = np.concatenate([pos, neg], axis=1)
    ranks = rankdata(both, axis=1)
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_bootstrap(arm_rows, base_rows, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """Crossed bootstrap of the seed-mean AUC for the arm (and, paired, for base): one resampling of
    members and of non-members per replicate, shared by every seed and both arms; seeds by the
    rescaled seed bootstrap (a seed-independent arm has one run)."""
    rng = np.random.default_rng(seed)
    n_pos, n_neg = len(arm_rows[0][0]), len(arm_rows[0][1])
    if base_rows is not None and (len(base_rows[0][0]), len(base_rows[0][1])) != (n_pos, n_neg):
        raise ValueError("paired comparison needs the same membership items for arm and base")
    ip = rng.integers(0, n_pos, size=(n_boot, n_pos))
    ineg = rng.integers(0, n_neg, size=(n_boot, n_neg))

    def seed_mean(rows, sw):
        per = np.stack([_auc_reps(p[ip], n[ineg]) for p, n in rows], axis=1)   # B × S
        return (per * sw).sum(axis=1) / sw.sum(axis=1)

    sw_arm = seed_weights(rng, len(arm_rows), n_boot)
    arm = seed_mean(arm_rows, sw_arm)
    base = None
    if base_rows is not None:
        same = len(base_rows) == len(arm_rows)
        base = seed_mean(base_rows, sw_arm if same else seed_weights(rng, len(base_rows), n_boot))
    point_arm = float(np.mean([_auc_reps(p[None], n[None])[0] for p, n in arm_rows]))
    point_base = float(np.mean([_auc_reps(p[None], n[None])[0] for p, n in base_rows])) if base_rows else float("nan")
    return arm, base, point_arm, point_base


# capability metrics: measurable on a model only when base itself beats chance at them (a metric base
# cannot do is reported as "not measurable on this model", never gated or read as removal):
# metric -> (set, the metrics it vouches for, chance level: a number or a per-prompt key whose mean is it)
CAPABILITIES: dict[str, tuple[str, tuple[str, ...], str | float]] = {
    "yes_no_accuracy": ("yes_no", ("yes_no_accuracy", "yes_no_unparsed_share"), "yes_no_majority"),
    "comprehension_chrf_gain": ("comprehension", ("comprehension_chrf", "comprehension_chrf_gain"), 0.0),
}


def measurability(results: Results, arm_seeds: dict[str, list[int]], cfg: dict, sets: list[str]) -> dict:
    """For each capability metric of an evaluated set: is base's value above chance (its one-sided
    lower bound at ``alpha`` above the chance level)? yes/no questions: chance is always giving the
    majority answer; comprehension: the chrF gain of an output over another prompt's reference, chance 0."""
    out = {}
    for metric, (set_name, covers, chance) in CAPABILITIES.items():
        if set_name not in sets:
            continue
        sample, reason = results.sample("base", set_name, metric, arm_seeds["base"])
        entry: dict = {"set": set_name, "metrics": list(covers)}
        if sample is None:
            out[metric] = {**entry, "measurable": False, "reason": f"base has no value: {reason}"}
            continue
        if isinstance(chance, str):
            recs = results.by[("base", set_name)]
            vals = [v for s in arm_seeds["base"] for v in recs[s]["per_prompt"].get(chance, [])]
            if not vals:
                out[metric] = {**entry, "measurable": False, "reason": f"no per-prompt {chance} for its chance level"}
                continue
            level = float(np.mean(vals))
        else:
            level = float(chance)
        reps = replicates(sample, draw([sample], cfg["n_boot"], cfg["rng_seed"]))
        lo = lower_bound(reps, cfg["alpha"])
        ok = bool(lo > level)
        out[metric] = {**entry, "measurable": ok, "base": sample.point(), "base_lower_bound": lo, "chance": level,
                       "reason": "" if ok else (f"not measurable on this model: base's {metric} on {set_name} is "
                                                f"{sample.point():.3g} (one-sided {1 - cfg['alpha']:.0%} lower bound "
                                                f"{lo:.3g}), not above chance ({level:.3g})")}
    return out


def forget_quality(results: Results, arms: list[str], arm_seeds: dict[str, list[int]], oracle: str | None) -> dict:
    """TOFU's *forget quality* in mmie's terms (reported, not gated): the p-value of a two-sample
    Kolmogorov–Smirnov test between the arm's and the oracle's per-member Min-K%++ scores on forget/train
    (every seed's scores pooled). TOFU compares truth-ratio distributions; Min-K%++ is likewise
    normalised by each model's own next-token distribution, so the two models' scores are comparable.
    A high p-value: the arm's view of the members cannot be told from that of a model that never saw
    them; a low one: it can (it still remembers them, or over-unlearned them). None without an oracle."""
    if oracle is None:
        return {}
    from scipy.stats import ks_2samp

    ref, reason = results.auc_rows(oracle, "mia_auc", arm_seeds[oracle])
    if ref is None:
        return {"_reason": reason}
    ref_members = np.concatenate([m for m, _ in ref])
    out = {}
    for arm in arms:
        if arm == oracle:
            continue
        rows, reason = results.auc_rows(arm, "mia_auc", arm_seeds[arm])
        if rows is None:
            out[arm] = {"p_value": None, "reason": reason}
            continue
        members = np.concatenate([m for m, _ in rows])
        test = ks_2samp(members, ref_members)
        out[arm] = {"p_value": float(test.pvalue), "ks_statistic": float(test.statistic),
                    "n_arm": int(members.size), "n_oracle": int(ref_members.size)}
    return out


# intervals.csv: the output contract's columns first (config/results.schema.yaml)
INTERVAL_COLUMNS = ["estimate", "ci_low", "ci_high", "n_boot", "rng_seed", "level", "n_nonfinite"]


def default_seeded(arm_seeds: dict[str, list[int]]) -> dict[str, bool]:
    return {a: len(s) > 1 for a, s in arm_seeds.items()}


def intervals(results: Results, arms: list[str], sets: list[str], arm_seeds: dict[str, list[int]], cfg: dict,
              seeded: dict[str, bool] | None = None) -> list[dict]:
    """Two-sided crossed-bootstrap interval (``stats.level``) for every arm × set × metric with
    per-prompt values, with the number of seeds of the arm and whether its outputs depend on the seed."""
    seeded = seeded or default_seeded(arm_seeds)
    level = cfg["level"]
    rows = []
    for arm in arms:
        seeds = arm_seeds[arm]
        for set_name in sets:
            recs = results.by.get((arm, set_name), {})
            if not recs:
                continue
            metrics = sorted(set().union(*(r["metrics"].keys() for s, r in recs.items() if s in seeds)))
            for metric in metrics:
                info = {"arm": arm, "set": set_name, "metric": metric}
                design = {"n_seeds": len(seeds), "seeded": seeded[arm]}
                if metric in AUC_METRICS:
                    data, reason = results.auc_rows(arm, metric, seeds)
                    if data is None:
                        log.warning("no interval for %s/%s/%s: %s", arm, set_name, metric, reason)
                        continue
                    reps, _, point, _ = auc_bootstrap(data, None, cfg["n_boot"], cfg["rng_seed"])
                    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
                    rows.append({**info, "estimate": point, "ci_low": float(lo), "ci_high": float(hi),
                                 "n_boot": cfg["n_boot"], "rng_seed": cfg["rng_seed"], "level": level, "n_nonfinite": 0,
                                 **design, "n_prompts": len(data[0][0]) + len(data[0][1])})
                    continue
                sample, reason = results.sample(arm, set_name, metric, seeds)
                if sample is None:
                    log.warning("no interval for %s/%s/%s: %s", arm, set_name, metric, reason)
                    continue
                try:
                    ci = hierarchical_ci(sample, cfg["n_boot"], cfg["rng_seed"], level)
                except ValueError as err:
                    log.warning("no interval for %s/%s/%s: %s", arm, set_name, metric, err)
                    continue
                rows.append({**info, **{k: ci[k] for k in INTERVAL_COLUMNS if k in ci}, **design,
                             "n_prompts": ci["n_prompts"]})
    return rows


def expand_gates(gates: list[dict], neighbours: list[str]) -> list[dict]:
    """A gate on set 'neighbours' becomes one gate per neighbour language (and stays one gate, which
    then fails as "not evaluated", when no neighbour language is configured)."""
    out = []
    for g in gates:
        if g["set"] == "neighbours" and neighbours:
            out += [{**g, "set": code, "name": f"{g['name']}[{code}]"} for code in neighbours]
        else:
            out.append(g)
    return out


VERDICTS = ("pass", "shown", "not_excluded", "missing", "not_configured")


def gate_reference(gate: dict, oracle: str | None) -> tuple[str, str | float]:
    """What a gate compares with: ("arm", name) for base or the oracle arm, ("constant", x) for the
    fallback constant of an oracle-referenced gate in a study without an oracle arm."""
    ref = gate.get("reference", "base")
    if ref == "base":
        return "arm", "base"
    if oracle is not None:
        return "arm", oracle
    return "constant", float(gate["fallback"])


def _tested(value: float, base: float, threshold: float, reps: np.ndarray, kind: str, delta: float = 0.0) -> dict:
    return {"value": value, "base": base, "threshold": threshold, "reps": reps, "kind": kind, "delta": delta}


def _from_reps(a: np.ndarray, b: np.ndarray, pa: float, pb: float, gate: dict) -> dict:
    """The tested quantity of a gate: ``arm − reference`` for "within" (TOST), else ``arm − threshold``."""
    if gate["direction"] == "within":
        return _tested(pa, pb, gate["threshold"], a - b, "within", gate["threshold"])
    floor = gate.get("floor")
    thr = float(threshold_of(pb, gate["relative"], gate["threshold"], floor))
    return _tested(pa, pb, thr, a - threshold_of(b, gate["relative"], gate["threshold"], floor), gate["direction"])


def _blank_row(arm: str, gate: dict, arm_seeds: dict[str, list[int]]) -> dict:
    return {"arm": arm, "gate": gate["name"], "metric": gate["metric"], "set": gate["set"],
            "direction": gate["direction"], "relative": gate["relative"], "factor": gate["threshold"],
            "floor": gate.get("floor"), "reference": gate.get("reference", "base"),
            "value": None, "base": None, "threshold": None, "margin": None, "ci_low": None, "ci_high": None,
            "ci_level": None, "gate_alpha": None, "p_value": None, "p_adjusted": None, "passed": False,
            "verdict": "missing", "reason": "", "n_seeds": len(arm_seeds[arm]),
            "base_n_seeds": len(arm_seeds.get("base", [])), "n_prompts": None}


def evaluate_gate(results: Results, arm: str, gate: dict, arm_seeds: dict[str, list[int]], cfg: dict,
                  oracle: str | None = None) -> dict:
    """One gate's row, with the bootstrap replicates of its tested quantity under ``_test`` (or a
    failing reason). ``oracle``: the study's oracle arm (reference of ``reference: oracle`` gates)."""
    seeds = arm_seeds[arm]
    row = _blank_row(arm, gate, arm_seeds)
    metric, set_name = gate["metric"], gate["set"]
    kind, ref = gate_reference(gate, oracle)
    ref_arm = ref if isinstance(ref, str) else ""   # the reference arm (kind "arm": ref is its name)
    row["reference"] = ref if kind == "arm" else f"constant {ref:g}"
    ref_seeds = arm_seeds.get(ref_arm, []) if kind == "arm" else []
    if kind == "arm" and not ref_seeds:
        row["reason"] = f"missing metric: the reference arm {ref!r} is not part of this run"
        return row
    if metric in AUC_METRICS:
        arm_rows, reason = results.auc_rows(arm, metric, seeds)
        ref_rows, reason_b = results.auc_rows(ref_arm, metric, ref_seeds) if kind == "arm" else (None, None)
        if arm_rows is None or (kind == "arm" and ref_rows is None):
            row["reason"] = f"missing metric: {reason or reason_b}"
            return row
        try:
            a, b, pa, pb = auc_bootstrap(arm_rows, ref_rows, cfg["n_boot"], cfg["rng_seed"])
        except ValueError as err:
            row["reason"] = f"cannot compare with {ref}: {err}"
            return row
        row["n_prompts"] = len(arm_rows[0][0]) + len(arm_rows[0][1])
    else:
        sa, reason = results.sample(arm, set_name, metric, seeds)
        sb, reason_b = results.sample(ref_arm, set_name, metric, ref_seeds) if kind == "arm" else (sa, None)
        if sa is None or sb is None:
            row["reason"] = f"missing metric: {reason or reason_b}"
            return row
        if kind == "arm" and results.ids(arm, set_name, seeds[0]) != results.ids(ref_arm, set_name, ref_seeds[0]):
            row["reason"] = (f"cannot compare with {ref}: {arm} and {ref} were evaluated on different {set_name} "
                             f"prompts (rerun both evaluations on the same prepared data)")
            return row
        if kind == "arm":
            a, b = paired_reps(sa, sb, cfg["n_boot"], cfg["rng_seed"])
            pa, pb = sa.point(), sb.point()
        else:
            a = replicates(sa, draw([sa], cfg["n_boot"], cfg["rng_seed"]))   # against a constant
            pa = sa.point()
        row["n_prompts"] = sa.n_prompts
    if kind == "constant":
        b, pb = np.full_like(a, ref, dtype=float), float(ref)
    assert b is not None   # auc_bootstrap leaves it None only without a reference arm: kind "constant", set above
    test = _from_reps(a, b, pa, pb, gate)
    margin = test["value"] - (test["base"] if test["kind"] == "within" else test["threshold"])
    row.update(value=test["value"], base=test["base"], threshold=test["threshold"], margin=margin)
    if not (np.isfinite(test["value"]) and np.isfinite(test["threshold"]) and np.isfinite(test["base"])):
        row["reason"] = (f"non-finite value ({test['value']}), reference ({test['base']}) or threshold "
                         f"({test['threshold']}) of {metric} on {set_name}")
        return row
    g, d = test["reps"], test["delta"]
    row["p_value"] = (p_at_least(g) if test["kind"] == "<=" else p_at_most(g) if test["kind"] == ">="
                      else max(p_at_least(g - d), p_at_most(g + d)))
    row["_test"] = test
    return row


def _apply_level(row: dict, cfg: dict) -> None:
    """Decide one gate at level alpha (intersection–union test: no adjustment) and report its two-sided
    1 − 2·alpha interval: passed ⇔ the interval lies wholly on the right side; a failing gate's verdict
    is ``shown`` when it lies wholly on the wrong side, else ``not_excluded``."""
    test = row.pop("_test")
    g, kind, d = test["reps"], test["kind"], test["delta"]
    alpha = cfg["alpha"]
    lo, hi = lower_bound(g, alpha), upper_bound(g, alpha)
    if kind == "<=":
        passed, shown = hi < 0, lo > 0
    elif kind == ">=":
        passed, shown = lo > 0, hi < 0
    else:
        passed, shown = (-d < lo) and (hi < d), (lo > d) or (hi < -d)
    level = 1 - 2 * alpha
    row.update(ci_low=lo, ci_high=hi, ci_level=level, gate_alpha=alpha, passed=bool(passed),
               verdict="pass" if passed else "shown" if shown else "not_excluded")
    if passed:
        row["reason"] = ""
        return
    what = f"{row['set']} {COLLAPSE[row['metric']]}: " if row["metric"] in COLLAPSE else ""
    ref = row["reference"]
    head = "harm shown" if shown else "harm not excluded"
    base = f"{row['metric']} on {row['set']}: value {row['value']:.4g}"
    if kind == "within":
        side = "wholly outside" if shown else "not inside"
        row["reason"] = (f"{head} — {what}{base} vs {ref} {row['base']:.4g}: the {level:.4g} interval of arm − "
                         f"{ref} [{lo:.4g}, {hi:.4g}] is {side} ±{d:.4g}")
    else:
        want = "below" if kind == "<=" else "above"
        where = ("wholly " + ("above" if kind == "<=" else "below") + " 0") if shown else "straddles 0"
        row["reason"] = (f"{head} — {what}{base} vs threshold {row['threshold']:.4g} ({ref} {row['base']:.4g}); "
                         f"the {level:.4g} interval of value − threshold [{lo:.4g}, {hi:.4g}] {where} "
                         f"(it must lie {want} 0)")
    row["reason"] += f" (each gate at alpha {alpha}; all gates must pass)"


def decide(results: Results, arms: list[str], gates: list[dict], arm_seeds: dict[str, list[int]], cfg: dict, *,
           sets: list[str] | None = None, set_reasons: dict[str, str] | None = None,
           seeded: dict[str, bool] | None = None, oracle: str | None = None,
           not_configured: dict[str, str] | None = None) -> tuple[list[dict], dict]:
    """Gate rows for every non-base arm and the decision per arm. ``sets``: the sets this run
    evaluates (a gate on another set is a failing row "not evaluated", with ``set_reasons[set]``,
    unless ``not_configured`` names it: a default gate on a set the study does not configure, a row
    with verdict "not_configured" that the decision leaves out; ``mmie.config.gates_not_configured``);
    ``oracle``: the oracle arm, reference of ``reference: oracle`` gates."""
    seeded = seeded or default_seeded(arm_seeds)
    not_configured = not_configured or {}
    rows, decisions = [], {}
    for arm in arms:
        if arm == "base":
            continue
        arm_rows = []
        for g in gates:
            if sets is not None and g["set"] not in sets and g["name"] in not_configured:
                arm_rows.append({**_blank_row(arm, g, arm_seeds), "passed": None, "verdict": "not_configured",
                                 "reason": not_configured[g["name"]], "seeded": seeded[arm],
                                 "correction": cfg["correction"]})
                continue
            if sets is not None and g["set"] not in sets:
                why = (set_reasons or {}).get(g["set"], "this run does not evaluate it")
                row = {**_blank_row(arm, g, arm_seeds),
                       "reason": f"not evaluated: set {g['set']!r} is not part of this run ({why}); provide it or "
                                 f"remove gate {g['name']!r} from the config's gates"}
            else:
                row = evaluate_gate(results, arm, g, arm_seeds, cfg, oracle)
            row["seeded"] = seeded[arm]
            row["correction"] = cfg["correction"]
            arm_rows.append(row)
        tested = [r for r in arm_rows if "_test" in r]
        for r, p_adj in zip(tested, adjust([r["p_value"] for r in tested], cfg["correction"]), strict=True):
            r["p_adjusted"] = p_adj      # reported, as information: the decision is the intersection–union test
            _apply_level(r, cfg)
        counted = [r for r in arm_rows if r["verdict"] != "not_configured"]
        failing = [r["gate"] for r in counted if not r["passed"]]
        decisions[arm] = {"decision": "PROCEED" if counted and not failing else "STOP",
                          "failing": failing if counted else ["(no gates)"],
                          "reasons": {r["gate"]: r["reason"] for r in counted if not r["passed"]},
                          "verdicts": {r["gate"]: r["verdict"] for r in counted if not r["passed"]},
                          "n_seeds": len(arm_seeds[arm]), "seeded": seeded[arm]}
        rows += arm_rows
    return rows, decisions
