"""Layer selection is stable and says how stable (frequency, margin, ties, ``stable``)."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest

from mmie.sae import layers


def _noisy(means: dict[int, float], resamples: int, sd: float, seed: int = 0) -> list[dict[int, float]]:
    rng = np.random.default_rng(seed)
    return [{ly: float(m + rng.normal(0, sd)) for ly, m in means.items()} for _ in range(resamples)]


def test_planted_signal_layer_is_chosen_every_time_and_stable():
    scores = _noisy({0: 0.30, 1: 0.35, 2: 0.80, 3: 0.32}, resamples=10, sd=0.03)
    res = layers.stability(scores, n_layers=1, floor=0.6)
    assert res["layers"] == [2] and res["frequency"][2] == 1.0
    assert res["stable"] is True and res["tie"] is False and res["tie_broken_by"] is None
    assert res["margin"]["runner_up"] != 2 and res["margin"]["frequency"] == 1.0
    assert res["margin"]["mean_score"] > 0.3


def test_identical_layers_are_a_tie_not_a_silent_choice_by_order():
    """The fresh-machine failure: every layer scored the same in every resample. Each resample's vote
    is shared, the ranking is a tie in frequency and mean score, flagged and unstable."""
    scores = [{0: 0.53125, 1: 0.53125, 2: 0.53125, 3: 0.53125} for _ in range(5)]
    res = layers.stability(scores, n_layers=1, floor=0.6)
    assert res["frequency"] == {0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}
    assert res["tie"] is True and res["tie_broken_by"] == "layer_index" and res["stable"] is False
    assert res["layers"] == [0] and res["below_floor"] == [0]
    assert res["resamples_with_split_votes"] == 5
    assert res["margin"] == {"last_chosen": 0, "runner_up": 1, "frequency": 0.0, "mean_score": 0.0}


def test_thin_frequency_is_unstable_and_a_frequency_tie_is_broken_by_mean_score():
    scores = [{0: 0.9, 1: 0.1}] * 3 + [{0: 0.1, 1: 0.9}] * 2
    res = layers.stability(scores, n_layers=1, floor=0.7)
    assert res["layers"] == [0] and res["frequency"][0] == pytest.approx(0.6)
    assert res["stable"] is False and res["below_floor"] == [0] and res["tie"] is False
    even = [{0: 0.9, 1: 0.2}, {0: 0.1, 1: 0.7}]       # one vote each, layer 0 higher on average
    res = layers.stability(even, n_layers=1, floor=0.5)
    assert res["layers"] == [0] and res["tie"] is False and res["tie_broken_by"] == "mean_score"


def test_two_layers_chosen_with_a_shared_slot():
    scores = [{0: 0.9, 1: 0.5, 2: 0.5}] * 4
    res = layers.stability(scores, n_layers=2, floor=0.6)
    assert res["frequency"] == {0: 1.0, 1: 0.5, 2: 0.5}
    assert res["layers"] == [0, 1] and res["tie"] is True and res["stable"] is False


def test_mass_lost_is_continuous():
    assert layers.mass_lost(10.0, 10.0, 5) == 0.0
    assert layers.mass_lost(10.0, 10.0 + 5 * np.log(2), 5) == pytest.approx(0.5)
    assert layers.mass_lost(10.0, 9.0, 5) < 0


def test_selection_on_a_model_with_identical_layers_reports_a_tie(tiny_lm, demo_texts):
    """End to end: layer 1 of a tiny model is made the identity (zero output projections), so layers 0
    and 1 carry the same activations and every score is equal. The artifact says so."""
    import torch

    model, tok = tiny_lm
    model = copy.deepcopy(model)
    block = model.model.layers[1]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    lm = SimpleNamespace(model=model, tokenizer=tok)
    data = {"target": demo_texts["hi"][:12], "retain": demo_texts["en"][:12], "neighbours": demo_texts["ur"][:12]}
    cfg = {"layers": {"selection": {"candidates": None, "n_layers": 1, "resamples": 3, "sample_fraction": 0.5,
                                    "cv_folds": 2, "causal_prompts": 4, "causal_max_new_tokens": 4,
                                    "probe_weight": 0.5, "causal_weight": 0.5, "stability_floor": 0.6,
                                    "tie_tolerance": 1e-9, "judge_weight": 0},
                      "activations": {"max_length": 32, "batch_size": 4}},
           "generation": {"max_new_tokens": 4, "min_new_tokens": 4}, "data": {"seed": 1}}
    res = layers.select(cfg, lm, data)
    for per in res["resamples"]:
        assert per["0"]["score"] == pytest.approx(per["1"]["score"], abs=1e-12)
    assert res["frequency"] == {"0": 0.5, "1": 0.5}
    assert res["tie"] is True and res["stable"] is False and res["tie_broken_by"] == "layer_index"
