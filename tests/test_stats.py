"""Statistics with known answers (issue: statistics and gates)."""
import numpy as np
import pytest
from scipy.stats import false_discovery_control

from mmie.stats import Sample, adjust, benjamini_hochberg, hierarchical_ci, holm, paired_margin


def mean_sample(arrays):
    return Sample([np.asarray(a, float) for a in arrays], [np.ones(len(a)) for a in arrays])


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    true, hits, trials = 0.3, 0, 200
    for t in range(trials):
        seed_effects = rng.normal(0, 0.05, size=3)
        arrays = [rng.binomial(1, np.clip(true + e, 0, 1), size=60) for e in seed_effects]
        ci = hierarchical_ci(mean_sample(arrays), n_boot=400, seed=t)
        hits += ci["ci_low"] <= true <= ci["ci_high"]
    # percentile bootstrap with 3 seeds under-covers somewhat; it must still be in the right range
    assert 0.80 <= hits / trials <= 0.99


def test_ratio_metrics_are_token_weighted():
    s = Sample([np.array([10.0, 30.0])], [np.array([5.0, 15.0])], transform="exp")
    assert s.point() == pytest.approx(np.exp(40 / 20))
    ci = hierarchical_ci(s, n_boot=200, seed=1)
    assert ci["ci_low"] <= ci["estimate"] <= ci["ci_high"] and ci["n_boot"] == 200 and ci["rng_seed"] == 1


def test_planted_difference_is_detected_and_null_is_not():
    rng = np.random.default_rng(3)
    base = [rng.binomial(1, 0.9, 80).astype(float) for _ in range(3)]
    strong = [np.where(rng.random(80) < 0.8, 0.0, b) for b in base]      # removes most positives
    planted = paired_margin(mean_sample(strong), mean_sample(base), relative="ratio", factor=0.5, n_boot=2000, seed=0)
    assert planted["p_below"] < 0.01 and planted["ci_high"] < 0
    null = paired_margin(mean_sample(base), mean_sample(base), relative="ratio", factor=1.0, n_boot=2000, seed=0)
    assert null["p_below"] > 0.05 and null["margin"] == 0


def test_null_rejections_stay_near_the_level():
    rng = np.random.default_rng(5)
    rejections = 0
    for t in range(100):
        base = [rng.binomial(1, 0.5, 60).astype(float) for _ in range(3)]
        arm = [rng.binomial(1, 0.5, 60).astype(float) for _ in range(3)]   # same distribution
        res = paired_margin(mean_sample(arm), mean_sample(base), relative="delta", factor=0.0, n_boot=500, seed=t)
        rejections += res["p_below"] < 0.05
    assert rejections <= 12


def test_paired_comparison_needs_the_same_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        paired_margin(mean_sample([[1, 0]]), mean_sample([[1, 0, 1]]), relative="ratio", factor=1, n_boot=10, seed=0)


def test_holm_and_bh_match_reference_computations():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm by hand: sorted 0.005,0.01,0.03,0.04 × 4,3,2,1 = 0.02,0.03,0.06,0.04 → monotone 0.02,0.03,0.06,0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p) == pytest.approx(false_discovery_control(p, method="bh"))
    rng = np.random.default_rng(0)
    q = rng.random(20).tolist()
    assert adjust(q, "bh") == pytest.approx(false_discovery_control(q, method="bh"))
    assert all(h >= x for h, x in zip(holm(q), q, strict=True)) and max(holm(q)) <= 1
    with pytest.raises(ValueError):
        adjust(q, "bonferroni-ish")
