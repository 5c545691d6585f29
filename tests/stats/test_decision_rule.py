"""The PROCEED/STOP rule as a test (docs/method.md §8): every gate one-sided at alpha, all must pass —
an intersection–union test (Berger 1982). Simulated arms drawn exactly at the gate thresholds must
PROCEED at most alpha of the time (up to Monte-Carlo error); arms well inside must PROCEED most of the
time. Also the gate options a perfect or an oracle arm needs: an absolute floor for ratio gates,
absolute thresholds, and the oracle (or a constant) as the reference."""
import numpy as np
import pytest

from mmie.stats.gates import RATIO_METRICS, Results, decide
from mmie.stats.inference import adjust

ALPHA = 0.05
METRICS = ["es", "target_rate", "es_romanized", "target_rate_romanized"]
P, SEEDS = 48, (0, 1, 2)


def records(arm, values, metric, seeds=SEEDS, set_name="forget"):
    key = RATIO_METRICS[metric][0]
    return [{"arm": arm, "seed": s, "set": set_name, "metrics": {metric: float(np.mean(v))}, "failures": {},
             "per_prompt": {"id": [f"p{i:03d}" for i in range(len(v))], key: list(map(float, v))}}
            for s, v in zip(seeds, values, strict=True)]


def merged(recs):
    out = {}
    for r in recs:
        key = (r["arm"], r["seed"], r["set"])
        if key in out:
            out[key]["metrics"].update(r["metrics"])
            out[key]["per_prompt"].update(r["per_prompt"])
        else:
            out[key] = {**r, "metrics": dict(r["metrics"]), "per_prompt": dict(r["per_prompt"])}
    return Results.from_records(list(out.values()))


def simulate(rng, shifts, n_boot):
    """One data set: base (seedless) and a 3-seed arm on the same 48 prompts, one metric per gate; the
    arm's mean is 0.5 × base's + shift (shift 0: exactly at the gate's threshold 0.5 × base)."""
    recs, gates = [], []
    for metric, shift in zip(METRICS, shifts, strict=True):
        prompt = rng.normal(0, 0.25, P)                       # prompt effects shared by base and arm
        base = 1.0 + prompt + rng.normal(0, 0.1, P)
        arm = [0.5 + 0.5 * prompt + shift + rng.normal(0, 0.02) + rng.normal(0, 0.15, P) for _ in SEEDS]
        recs += records("base", [base], metric, seeds=(0,)) + records("arm", arm, metric)
        gates.append({"name": metric, "metric": metric, "set": "forget", "direction": "<=", "relative": "ratio",
                      "threshold": 0.5})
    return merged(recs), gates


def proceed_rate(shifts, n_data=600, n_boot=400, seed=0):
    rng = np.random.default_rng(seed)
    proceed = holm_proceed = 0
    for d in range(n_data):
        res, gates = simulate(rng, shifts, n_boot)
        rows, decisions = decide(res, ["base", "arm"], gates, {"base": [0], "arm": list(SEEDS)},
                                 {"n_boot": n_boot, "rng_seed": d, "level": 0.95, "alpha": ALPHA, "correction": "holm"})
        proceed += decisions["arm"]["decision"] == "PROCEED"
        holm_proceed += all(p <= ALPHA for p in adjust([r["p_value"] for r in rows], "holm"))
    return proceed / n_data, holm_proceed / n_data


def test_false_proceed_at_most_alpha_and_power_well_inside():
    n = 600
    mc = 3 * np.sqrt(ALPHA * (1 - ALPHA) / n)                 # three Monte-Carlo standard errors
    one_at, _ = proceed_rate([0.0, -0.4, -0.4, -0.4], n_data=n, seed=1)   # one gate at its threshold
    all_at, _ = proceed_rate([0.0, 0.0, 0.0, 0.0], n_data=n, seed=2)      # every gate at its threshold
    inside, _ = proceed_rate([-0.09] * 4, n_data=n, seed=3)               # every gate well inside
    near, holm_near = proceed_rate([-0.05] * 4, n_data=n, seed=4)          # every gate a little inside
    print(f"PROCEED rate: one gate at threshold {one_at:.3f}, all at threshold {all_at:.3f} (alpha {ALPHA}, "
          f"MC bound {ALPHA + mc:.3f}); all well inside {inside:.3f}; all a little inside {near:.3f} "
          f"(with Holm-adjusted gates: {holm_near:.3f})")
    assert one_at <= ALPHA + mc, one_at
    assert all_at <= ALPHA + mc, all_at
    assert inside >= 0.9, inside                               # the power of the rule, reported above
    assert holm_near < near                                    # adjusting the gates only costs power


# ----------------------------------------------------------------------------- the gate options
def _res(base_vals, arm_vals, metric="target_rate", arm="arm"):
    return merged(records("base", [np.asarray(base_vals, float)], metric, seeds=(0,))
                  + records(arm, [np.asarray(arm_vals, float)], metric, seeds=(0,)))


CFG = {"n_boot": 1000, "rng_seed": 0, "level": 0.95, "alpha": ALPHA, "correction": "holm"}


def test_a_perfect_arm_passes_a_ratio_gate_only_with_a_floor():
    """mixed ES: base 0.08, a perfect arm 0 except one spurious full extraction in 48 prompts. 0.7 ×
    base = 0.057 is below what one output can move the mean: without a floor it fails; with the floor
    0.1 it passes."""
    base = [1.0] * 4 + [0.0] * 44                              # 0.083
    arm = [1.0] + [0.0] * 47                                   # 0.021
    gate = {"name": "mixed_es", "metric": "target_rate", "set": "forget", "direction": "<=", "relative": "ratio",
            "threshold": 0.7}
    rows, _ = decide(_res(base, arm), ["base", "arm"], [gate], {"base": [0], "arm": [0]}, CFG)
    assert not rows[0]["passed"] and rows[0]["verdict"] == "not_excluded"
    rows, _ = decide(_res(base, arm), ["base", "arm"], [{**gate, "floor": 0.1}], {"base": [0], "arm": [0]}, CFG)
    assert rows[0]["passed"] and rows[0]["threshold"] == pytest.approx(0.1)


def test_absolute_threshold_ignores_base():
    gate = {"name": "fluency", "metric": "target_rate", "set": "forget", "direction": "<=", "relative": "absolute",
            "threshold": 0.5}
    for base in ([0.0] * 48, [1.0] * 48):
        rows, _ = decide(_res(base, [0.1] * 24 + [0.2] * 24), ["base", "arm"], [gate], {"base": [0], "arm": [0]}, CFG)
        assert rows[0]["passed"] and rows[0]["threshold"] == 0.5


def _mia(arm, member_scores, nonmember_scores):
    ids = [f"m{i}" for i in range(len(member_scores) + len(nonmember_scores))]
    return {"arm": arm, "seed": 0, "set": "forget", "metrics": {}, "failures": {},
            "per_prompt": {"id": ["x"]},
            "mia": {"id": ids, "member": [1] * len(member_scores) + [0] * len(nonmember_scores),
                    "mink_pp": list(member_scores) + list(nonmember_scores),
                    "loss_score": list(member_scores) + list(nonmember_scores)}}


def test_mia_is_compared_with_the_oracle_or_with_chance_never_with_base():
    """Base trained on the members (AUC ≈ 1). An arm that forgot them scores like the oracle (≈ 0.5): it
    passes against the oracle and against the constant 0.5; "within 0.1 of base" would fail it. An arm
    that kept the memorisation fails against the oracle, with the harm shown."""
    rng = np.random.default_rng(0)
    n = 60
    mem, non = rng.normal(0, 1, n), rng.normal(0, 1, n)
    res = Results.from_records([
        _mia("base", mem + 3, non), _mia("oracle", mem, non), _mia("forgot", mem + 0.05, non),
        _mia("kept", mem + 3, non)])
    gate = {"name": "mia", "metric": "mia_auc", "set": "forget", "direction": "within", "relative": "delta",
            "threshold": 0.1, "reference": "oracle", "fallback": 0.5}
    seeds = {a: [0] for a in ("base", "oracle", "forgot", "kept")}
    rows, decisions = decide(res, ["base", "oracle", "forgot", "kept"], [gate], seeds, CFG, oracle="oracle")
    by = {r["arm"]: r for r in rows}
    assert by["oracle"]["passed"] and by["oracle"]["reference"] == "oracle"     # itself: arm − oracle ≡ 0
    assert by["forgot"]["passed"], by["forgot"]["reason"]
    assert not by["kept"]["passed"] and by["kept"]["verdict"] == "shown"
    assert decisions["kept"]["verdicts"] == {"mia": "shown"}
    # without an oracle arm: the constant 0.5
    rows, _ = decide(res, ["base", "forgot", "kept"], [gate], seeds, CFG, oracle=None)
    by = {r["arm"]: r for r in rows}
    assert by["forgot"]["passed"] and by["forgot"]["reference"] == "constant 0.5" and by["forgot"]["base"] == 0.5
    assert not by["kept"]["passed"]
    # the old rule (within 0.1 of base) fails the arm that forgot, and passes the one that kept
    rows, _ = decide(res, ["base", "forgot", "kept"], [{**gate, "reference": "base"}], seeds, CFG)
    by = {r["arm"]: r for r in rows}
    assert not by["forgot"]["passed"] and by["kept"]["passed"]


def test_oracle_gate_without_oracle_or_fallback_is_a_config_error(demo_config):
    import copy

    from mmie import config as mcfg
    from mmie.errors import ConfigError

    config = copy.deepcopy(demo_config)
    config["arms"] = {k: v for k, v in config["arms"].items() if v["method"] != "oracle"}
    config["gates"] = [{"name": "mia", "metric": "mia_auc", "set": "forget", "direction": "within",
                        "relative": "delta", "threshold": 0.1, "reference": "oracle"}]
    with pytest.raises(ConfigError, match="compares with the oracle arm, but the study has none"):
        mcfg.check_gates(config)
    config["gates"][0]["fallback"] = 0.5
    mcfg.check_gates(config)
    config["gates"][0].update(direction="<=", relative="delta", floor=0.1)
    with pytest.raises(ConfigError, match="'floor' applies to ratio gates"):
        mcfg.check_gates(config)


def test_forget_quality_is_a_ks_test_against_the_oracle():
    from scipy.stats import ks_2samp

    from mmie.stats.gates import forget_quality

    rng = np.random.default_rng(3)
    mem, non = rng.normal(0, 1, 80), rng.normal(0, 1, 80)
    res = Results.from_records([_mia("oracle", mem, non), _mia("forgot", rng.normal(0, 1, 80), non),
                                _mia("kept", mem + 2, non)])
    seeds = {a: [0] for a in ("oracle", "forgot", "kept")}
    q = forget_quality(res, ["oracle", "forgot", "kept"], seeds, "oracle")
    assert "oracle" not in q
    assert q["kept"]["p_value"] == pytest.approx(ks_2samp(mem + 2, mem).pvalue)      # the scipy reference
    assert q["kept"]["p_value"] < 1e-6 < 0.05 < q["forgot"]["p_value"]
    assert forget_quality(res, ["forgot"], seeds, None) == {}
