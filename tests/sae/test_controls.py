"""The random-latent control of the SAE gate (random_gate) on a planted SAE and planted activations:
it draws from the latents that pass the real gate's filters, matched to the chosen latents' forget
firing frequency, seeded."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import planted_cache
from mmie.errors import SAEError

D = 50
SEMANTIC = range(0, 16)       # fire on forget and romanized: the semantic method's candidates
POOL = range(16, 40)          # fire on forget only: rejected by `semantic`, but eligible for the control
FAILS = {40: "retain", 41: "retain", 42: "retain", 43: "retain", 44: "neighbour_ur", 45: "neighbour_ur",
         46: "gibberish", 47: "gibberish"}  # fire on forget often, and where the target must not be
SILENT = {48: "retain", 49: "neighbour_ur"}  # pass every filter but never fire on forget
CFG = {"method": "semantic", "n_features": 8, "retain_max_freq": 0.01, "min_forget_freq": 0.01,
       "gibberish_max_freq": 0.05, "gradient_texts": 16}


def planted():
    """An identity SAE (latent i fires when coordinate i > 0.5) and a cache whose forget firing
    rates are planted: semantic latents at 0.05..0.65, pool latents at 0.35..0.70, the
    filter-failing ones at 0.5..0.8 (and on their forbidden role at 0.3); two latents never fire on
    forget (but on retain or Urdu at 0.005)."""
    forget = {i: 0.05 + 0.04 * i for i in SEMANTIC} | {i: 0.35 + 0.015 * (i - 16) for i in POOL} \
        | {i: 0.5 + 0.04 * (i - 40) for i in FAILS}
    rates = {"forget": forget, "forget_romanized": {i: forget[i] for i in SEMANTIC},
             "retain": {}, "neighbour_ur": {}, "gibberish": {}}
    for i, role in FAILS.items():
        rates[role][i] = 0.3
    for i, role in SILENT.items():
        rates[role][i] = 0.005
    return planted_cache(D, rates, layer=3)


@pytest.fixture(scope="module")
def selected():
    from mmie.sae.features import firing_frequency, select_features

    sae, cache = planted()
    freq = {role: firing_frequency(sae, a) for role, a in cache.acts.items()}
    return sae, freq, {m: select_features(m, sae, cache, {**CFG, "method": m}) for m in ("semantic", "frequency")}


def test_control_pool_is_recorded_with_the_filters(selected):
    _, freq, res = selected
    sem = res["semantic"]
    chosen = [f["index"] for f in sem["features"]]
    assert chosen == list(range(15, 7, -1))  # the 8 most forget-frequent semantic latents
    pool = sem["control_pool"]
    # every latent that passes the exclusion filters, fires on forget and is not chosen; none that fails one
    assert pool["index"] == list(range(0, 8)) + list(POOL)
    assert any("fires_on_gibberish" in f for f in pool["filters"]) and pool["requires"].startswith("freq_forget > 0")
    assert pool["freq_forget"] == pytest.approx([float(freq["forget"][i]) for i in pool["index"]])
    assert pool["freq_neighbours"]["ur"] == [0.0] * len(pool["index"])
    assert "freq_gibberish" in pool and "freq_gibberish" not in res["frequency"]["control_pool"]


def test_random_control_passes_the_filters_matches_frequencies_and_follows_the_seed(selected):
    from mmie.sae.features import ks_distance, matched_random

    _, freq, res = selected
    sem = res["semantic"]
    chosen = {f["index"] for f in sem["features"]}
    picked, rec = matched_random(sem, seed=0)
    assert len(picked) == len(chosen) == 8
    assert not set(picked) & chosen and not set(picked) & set(FAILS)
    for i in picked:  # the same thresholds as the real gate
        assert freq["retain"][i] <= CFG["retain_max_freq"] and freq["neighbour_ur"][i] <= CFG["retain_max_freq"]
        assert freq["gibberish"][i] <= CFG["gibberish_max_freq"] and freq["forget"][i] > 0
    # matched: per-stratum counts equal, nothing widened, the distributions close
    assert [s["random"] for s in rec["strata"]] == [s["chosen"] for s in rec["strata"]] == [2, 2, 2, 2]
    assert rec["widened"] == []
    assert rec["chosen_freq_forget"] == sorted(f["freq_forget"] for f in sem["features"])
    assert rec["random_freq_forget"] == sorted(float(freq["forget"][i]) for i in picked)
    assert rec["ks_distance"] == ks_distance(rec["chosen_freq_forget"], rec["random_freq_forget"]) <= 0.25
    # an unmatched draw from the same pool is far from the chosen frequencies: the matching matters
    low = sorted(sem["control_pool"]["freq_forget"])[:8]
    assert ks_distance(rec["chosen_freq_forget"], low) == 1.0
    # deterministic given the seed, different between seeds
    assert matched_random(sem, seed=0) == (picked, rec)
    draws = {tuple(matched_random(sem, seed=s)[0]) for s in range(4)}
    assert len(draws) == 4


def test_unmatchable_strata_widen_and_are_recorded(selected):
    """`frequency` chooses the most forget-frequent latents that pass the filters: every other
    eligible latent is below them, so the upper strata borrow from below, and the record says so."""
    from mmie.sae.features import matched_random

    _, freq, res = selected
    fr = res["frequency"]
    picked, rec = matched_random(fr, seed=0)
    assert not set(picked) & {f["index"] for f in fr["features"]} and not set(picked) & set(FAILS)
    assert [s["chosen"] for s in rec["strata"]] == [2, 2, 2, 2]
    assert [s["pool"] for s in rec["strata"]][1:] == [0, 0, 0] and rec["strata"][0]["random"] == 8
    assert [(w["stratum"], w["short"]) for w in rec["widened"]] == [(1, 2), (2, 2), (3, 2)]
    assert rec["widened"][2]["filled_from"] == [{"stratum": 0, "latents": 2}]
    assert rec["ks_distance"] == 1.0


def test_too_small_a_pool_and_an_old_features_file_are_errors(selected):
    from mmie.sae.features import matched_random

    sem = dict(selected[2]["semantic"])
    small = {k: (v[:3] if isinstance(v, list) and k != "filters" else v) for k, v in sem["control_pool"].items()}
    small["freq_neighbours"] = {"ur": [0.0] * 3}
    with pytest.raises(SAEError, match=r"needs 8 latents besides the 8 chosen ones, but only 3 other latents fire on "
                                        r"forget and pass the filters.*fires_on_gibberish.*features.n_features"):
        matched_random({**sem, "control_pool": small}, seed=0)
    with pytest.raises(SAEError, match="no control_pool.*rerun select_features"):
        matched_random({k: v for k, v in sem.items() if k != "control_pool"}, seed=0)


def test_layer_edits_records_both_distributions(selected):
    from mmie.arms.edit_arms import LayerAssets, layer_edits
    from mmie.sae.edits import SaeCodec

    sae, _, res = selected
    assets = LayerAssets(selection=Path("/nonexistent"))
    assets._gates[(3, "f")] = (SaeCodec(sae), res["semantic"])
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=D))
    config = {"gate": {"alpha": 1.0, "mode": "scale", "clamp": 0.0}}
    _, det = layer_edits(config, {"method": "random_gate", "layers": [3]}, model, assets, 5, fingerprint="f")
    control = det["layer3"]["control"]
    assert det["layer3"]["features"] == sorted(det["layer3"]["features"]) and len(det["layer3"]["features"]) == 8
    assert len(control["chosen_freq_forget"]) == len(control["random_freq_forget"]) == 8
    assert control["seed"] == 5 and control["ks_distance"] <= 0.25
    _, real = layer_edits(config, {"method": "sae_gate", "layers": [3]}, model, assets, 5, fingerprint="f")
    assert "control" not in real["layer3"] and real["layer3"]["features"] == [f["index"] for f in res["semantic"]["features"]]
