"""The number of latents a gate takes is derived from the data at feature selection: no more than the
forget-frequency-matched random control can match (issue 24: every target language works with the
defaults), recorded, and nothing choosable fails at select_features, naming the settings."""


import pytest

from conftest import planted_cache
from mmie.errors import SAEError

D = 40
CFG = {"method": "frequency", "n_features": 16, "retain_max_freq": 0.01, "min_forget_freq": 0.01,
       "gibberish_max_freq": 0.05, "gradient_texts": 16}


def planted(forget: dict[int, float], retain: dict[int, float] | None = None):
    """An identity SAE and a cache with planted forget (and retain) firing rates."""
    return planted_cache(D, {"forget": forget, "retain": retain or {}, "neighbour_ur": {}}, layer=2)


def test_a_pool_too_small_for_the_requested_count_gives_fewer_latents_and_a_drawable_control():
    from mmie.sae.features import explain_n_features, matched_random, select_features

    # 20 candidates (forget 0.2..0.58), 4 latents rare on forget (0.005: eligible for the control only),
    # 4 firing on retain (excluded from both), the rest silent: 24 eligible latents, so at most 12 chosen
    forget = {i: 0.2 + 0.02 * i for i in range(20)} | {i: 0.005 for i in range(20, 24)} \
        | {i: 0.3 for i in range(24, 28)}
    sae, cache = planted(forget, retain={i: 0.3 for i in range(24, 28)})
    res = select_features("frequency", sae, cache, CFG)
    assert res["n_features"] == {"requested": 16, "used": 12, "limited_by": "control_pool", "candidates": 20,
                                 "eligible": 24, "pool": 12}
    assert res["n_selected"] == len(res["features"]) == 12
    assert [f["index"] for f in res["features"]] == list(range(19, 7, -1))  # still the best ones
    assert res["thresholds"]["n_features"] == 16
    picked, rec = matched_random(res, seed=0)          # the control can be drawn
    assert len(picked) == 12 and not set(picked) & {f["index"] for f in res["features"]}
    assert not set(picked) & set(range(24, 28))
    assert "12 latents instead of the 16" in explain_n_features(res["n_features"])
    # enough eligible latents: the requested count, and it says so
    res = select_features("frequency", sae, cache, {**CFG, "n_features": 4})
    assert res["n_features"]["used"] == 4 and res["n_features"]["limited_by"] == "requested"
    # fewer candidates than requested, with a pool for all of them
    res = select_features("frequency", sae, cache, {**CFG, "n_features": 16, "min_forget_freq": 0.5})
    assert res["n_features"]["limited_by"] == "candidates" and res["n_selected"] == res["n_features"]["candidates"] == 5


def test_no_latent_with_a_control_fails_at_selection_naming_the_settings():
    from mmie.sae.features import select_features

    # one latent fires on forget and passes the filters: chosen, nothing is left for its control
    sae, cache = planted({0: 0.4, 1: 0.4}, retain={1: 0.3})
    with pytest.raises(SAEError, match=r"(?s)layer 2: 1 latents pass the filters, but no latent can be chosen with a "
                                       r"random control.*only 1 of the 40.*features\.retain_max_freq.*sae\.expansion.*"
                                       r"sae\.train_tokens.*features\.n_features"):
        select_features("frequency", sae, cache, CFG)


def test_the_results_page_and_the_features_table_explain_the_count(tmp_path):
    from mmie import io
    from mmie.report.results_page import feature_choice
    from mmie.report.sae_report import features_table

    n = {"requested": 64, "used": 22, "limited_by": "control_pool", "candidates": 30, "eligible": 44, "pool": 22}
    feats = {"layer": 1, "method": "frequency", "n_features": n,
             "features": [{"index": i, "score": 0.5, "freq_forget": 0.5} for i in range(22)]}
    assert feature_choice([feats]) == [
        "- **SAE gate, layer 1** (frequency selection): 22 latents instead of the 64 features.n_features asks: only 44 "
        "latents fire on forget and pass the exclusion filters, and the forget-frequency-matched random control needs "
        "as many latents outside the chosen ones as the gate takes (the control pool then holds 22)."]
    io.write_json(tmp_path / "layer1.json", feats)
    table = features_table([str(tmp_path / "layer1.json")])
    assert set(table["n_features_used"]) == {22} and set(table["n_features_limited_by"]) == {"control_pool"}
