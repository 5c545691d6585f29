"""Statistics with known answers (issue: statistics and gates)."""
import numpy as np
import pytest
from scipy.stats import false_discovery_control

from mmie.stats.inference import (
    Sample,
    adjust,
    benjamini_hochberg,
    hierarchical_ci,
    holm,
    lower_bound,
    p_at_least,
    p_at_most,
    paired_margin,
    paired_reps,
    upper_bound,
)


def mean_sample(arrays):
    return Sample([np.asarray(a, float) for a in arrays], [np.ones(len(a)) for a in arrays])


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


@pytest.mark.parametrize("seed", range(5))
def test_holm_bh_and_bonferroni_match_statsmodels(seed):
    """statsmodels' multipletests is the reference implementation of every correction mmie offers."""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.random(12), rng.random(6) * 0.01, [0.5, 0.5]]).tolist()   # ties included
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh"), ("bonferroni", "bonferroni")):
        assert adjust(p, ours) == pytest.approx(multipletests(p, method=theirs)[1], abs=1e-12), ours


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_mann_whitney_count_and_the_bootstrap_auc_is_scikit_learns(seed):
    """text.auc against an independent pairwise count (ties half); the bootstrap's vectorised rank AUC
    against scikit-learn's roc_auc_score on resampled, tied scores."""
    from sklearn.metrics import roc_auc_score

    from mmie.stats.gates import _auc_reps
    from mmie.stats.text import auc

    rng = np.random.default_rng(seed)
    pos, neg = rng.integers(0, 6, size=17).astype(float), rng.integers(0, 5, size=11).astype(float)   # many ties
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in pos for b in neg]
    assert auc(pos.tolist(), neg.tolist()) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    reps_p, reps_n = pos[rng.integers(0, 17, (8, 17))], neg[rng.integers(0, 11, (8, 11))]
    want = [roc_auc_score([1] * 17 + [0] * 11, np.concatenate([a, b])) for a, b in zip(reps_p, reps_n, strict=True)]
    assert _auc_reps(reps_p, reps_n) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError):
        auc([], [1.0])
    with pytest.raises(ValueError):
        auc([float("nan")], [1.0])


# ----------------------------------------------------------------------------- the crossed design
def test_copies_of_one_run_carry_no_extra_information():
    """Three seeds with identical outputs (a seed-independent arm run three times) give exactly the
    interval of the single run: the prompts are resampled once per replicate for every seed."""
    rng = np.random.default_rng(0)
    one = rng.binomial(1, 0.4, 48).astype(float)
    single = hierarchical_ci(mean_sample([one]), n_boot=1000, seed=3)
    copies = hierarchical_ci(mean_sample([one, one, one]), n_boot=1000, seed=3)
    assert (copies["ci_low"], copies["ci_high"]) == pytest.approx((single["ci_low"], single["ci_high"]))
    assert copies["ci_high"] - copies["ci_low"] > 0.15


def test_seeded_arm_against_seedless_base_uses_one_prompt_vector():
    """A seeded arm (3 seeds) whose every seed equals the single base run: in every replicate the arm
    and base see the same resampled prompts, so arm − base is exactly 0."""
    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 0.5, 48)
    arm, b = paired_reps(mean_sample([base, base, base]), mean_sample([base]), n_boot=500, seed=0)
    np.testing.assert_allclose(arm - b, 0.0, atol=1e-12)
    # the seeds of a seeded arm still vary: a seed offset shows up, prompt noise does not
    offsets = [base + d for d in (-0.1, 0.0, 0.1)]
    arm, b = paired_reps(mean_sample(offsets), mean_sample([base]), n_boot=500, seed=0)
    assert set(np.round(arm - b, 9)) <= {-0.1, -0.05, 0.0, 0.05, 0.1} and np.std(arm - b) > 0.03


def test_crossed_design_requires_the_same_prompts_in_every_seed():
    with pytest.raises(ValueError, match="same prompts"):
        mean_sample([[1, 0, 1], [1, 0]])


def test_bound_clears_exactly_when_p_is_at_most_gamma():
    g = np.concatenate([np.full(1900, -1.0), np.full(100, 0.0)])        # p = 100/2000 = 0.05 exactly
    assert p_at_least(g) == 0.05 and upper_bound(g, 0.05) < 0
    g[0] = 0.5                                                          # 101 replicates >= 0
    assert p_at_least(g) > 0.05 and not upper_bound(g, 0.05) < 0
    rng = np.random.default_rng(0)
    for _ in range(300):
        g = rng.normal(rng.normal(-1, 1), 1, int(rng.integers(50, 500)))
        gamma = float(rng.choice([0.05, 0.025, 0.05 / 3, 0.01, 0.0125]))
        assert (upper_bound(g, gamma) < 0) == (p_at_least(g) <= gamma)
        assert (lower_bound(g, gamma) > 0) == (p_at_most(g) <= gamma)
