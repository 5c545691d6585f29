"""The probe attack (mmie/attacks/probe.py): hidden states as the arm leaves them, a probe whose
regularisation never sees test data."""

import numpy as np
import pytest
import torch

from mmie.attacks import ATTACKS
from mmie.attacks.probe import ATTACK, fit_probe, hidden_means

TEXTS = ["नमस्ते दुनिया", "the cat sat on the mat and looked around", "यह एक छोटा वाक्य है जो थोड़ा लंबा है", "hi"]


def test_declared():
    assert ATTACK.name == "probe" and ATTACK.name in ATTACKS and ATTACK.strength == "layer"


def own_copy(tiny_lm):
    """A private copy of the session's tiny model: transformers installs hidden-state hooks on a model
    the first time it is asked for ``output_hidden_states`` and keeps them, which would leave hooks on
    the shared model for every later test that counts them."""
    import copy

    return copy.deepcopy(tiny_lm[0]), tiny_lm[1]


def test_hidden_means_are_block_outputs_pooled_over_real_tokens(tiny_lm):
    model, tok = own_copy(tiny_lm)
    got = hidden_means(model, tok, TEXTS, batch_size=3, max_length=64)
    n_layers = model.config.num_hidden_layers
    assert got.shape == (n_layers, len(TEXTS), model.config.hidden_size) and got.dtype == np.float64
    # one text at a time, no padding, through transformers' own hidden states: block i is hidden_states[i + 1]
    # (the last entry is the final norm's output there, so only the blocks before the last are compared)
    for j, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        assert len(hs) == n_layers + 1
        for i in range(n_layers - 1):
            np.testing.assert_allclose(got[i, j], hs[i + 1][0].double().mean(0).numpy(), rtol=1e-5, atol=1e-5)
    # the batch's padding does not reach a text's means
    alone = hidden_means(model, tok, TEXTS[:1], batch_size=1, max_length=64)
    np.testing.assert_allclose(got[:, 0], alone[:, 0], rtol=1e-5, atol=1e-5)
    # a subset of layers, in the order asked
    sub = hidden_means(model, tok, TEXTS, batch_size=4, max_length=64, layers=[1, 0])
    np.testing.assert_allclose(sub, got[[1, 0]], rtol=1e-5, atol=1e-5)


def test_a_hook_on_a_decoder_layer_changes_what_the_probe_reads(tiny_lm):
    """An arm's edits are hooks registered when it is switched on, after transformers installed its
    own hidden-state hooks (here: a call with output_hidden_states first): they must still count."""
    from mmie.model.hooks import decoder_layers, hook_count

    model, tok = own_copy(tiny_lm)
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(input_ids=ids, output_hidden_states=True)
    before = hidden_means(model, tok, TEXTS, batch_size=4, max_length=64)
    hooks_before = hook_count(model)
    handle = decoder_layers(model)[0].register_forward_hook(
        lambda module, args, output: (torch.zeros_like(output[0]), *output[1:]) if isinstance(output, tuple)
        else torch.zeros_like(output))
    try:
        zeroed = hidden_means(model, tok, TEXTS, batch_size=4, max_length=64)
    finally:
        handle.remove()
    assert np.all(zeroed[0] == 0) and np.abs(before[0]).max() > 0
    assert not np.allclose(zeroed[1], before[1])
    assert hook_count(model) == hooks_before                # the probe leaves no hook behind
    np.testing.assert_array_equal(hidden_means(model, tok, TEXTS, batch_size=4, max_length=64), before)


def test_hidden_means_refuse_bad_input(tiny_lm):
    from mmie.errors import ConfigError, DataError

    model, tok = tiny_lm
    with pytest.raises(DataError, match="no texts"):
        hidden_means(model, tok, [], batch_size=2, max_length=16)
    with pytest.raises(ConfigError, match=r"layers \[5\] do not exist"):
        hidden_means(model, tok, TEXTS, batch_size=2, max_length=16, layers=[5])
    with pytest.raises(DataError, match="no tokens"):
        hidden_means(model, tok, ["", "a text"], batch_size=2, max_length=16)


def planted(n: int, rng, d: int = 6, classes=("hi", "en", "ur")):
    y = np.array([classes[i % len(classes)] for i in range(n)])
    X = rng.normal(size=(n, d))
    X[:, 2] = [classes.index(c) * 3.0 for c in y]         # one dimension is the label
    return X, y


def test_a_planted_feature_is_read_perfectly():
    rng = np.random.default_rng(0)
    res = fit_probe(planted(90, rng), planted(30, rng), planted(30, rng), Cs=[10.0, 1.0, 0.1], seed=0)
    assert res["test_accuracy"] == 1.0 and res["dev_accuracy"] == 1.0
    assert res["classes"] == ["en", "hi", "ur"] and res["per_class_recall"] == {"en": 1.0, "hi": 1.0, "ur": 1.0}
    assert res["test_correct"] == [1] * 30 and len(res["test_pred"]) == 30
    # every C is perfect on dev: the tie goes to the smallest (the strongest regularisation)
    assert set(res["dev_accuracy_by_C"].values()) == {1.0} and res["C"] == 0.1


def test_noise_labels_stay_near_chance():
    rng = np.random.default_rng(1)

    def noise(n):
        return rng.normal(size=(n, 8)), rng.choice(["a", "b", "c"], size=n)

    res = fit_probe(noise(300), noise(200), noise(900), Cs=[0.01, 1.0, 100.0], seed=0)
    assert abs(res["test_accuracy"] - 1 / 3) < 0.07
    assert sum(res["test_correct"]) == round(res["test_accuracy"] * 900)


def test_c_is_chosen_without_the_test_split():
    rng = np.random.default_rng(2)
    train, dev, test = planted(60, rng, d=20), planted(60, rng, d=20), planted(60, rng, d=20)
    for X, _ in (train, dev, test):                         # a weak planted feature: C matters
        X[:, 2] = X[:, 2] * 0.15 + rng.normal(size=len(X))
    Cs = [0.001, 0.01, 0.1, 1.0, 10.0]
    res = fit_probe(train, dev, test, Cs=Cs, seed=0)
    shuffled = (test[0], rng.permutation(test[1]))
    again = fit_probe(train, dev, shuffled, Cs=Cs, seed=0)
    assert again["C"] == res["C"] and again["dev_accuracy"] == res["dev_accuracy"]
    assert again["dev_accuracy_by_C"] == res["dev_accuracy_by_C"]
    assert again["test_pred"] == res["test_pred"]           # the same probe, only scored against other labels
    assert res["dev_accuracy"] == max(res["dev_accuracy_by_C"].values())


def test_test_features_are_scaled_with_train_statistics():
    """A shift of every test row moves the predictions: a scaler fitted on test would undo it."""
    rng = np.random.default_rng(3)
    train, dev, test = planted(60, rng), planted(30, rng), planted(30, rng)
    shifted = (test[0] + np.array([0, 0, 6.0, 0, 0, 0]), test[1])
    a = fit_probe(train, dev, test, Cs=[1.0], seed=0)
    b = fit_probe(train, dev, shifted, Cs=[1.0], seed=0)
    assert a["test_accuracy"] == 1.0 and b["test_accuracy"] < 0.5


def test_splits_that_cannot_be_probed_are_refused_by_name():
    rng = np.random.default_rng(4)
    train, dev, test = planted(30, rng), planted(30, rng), planted(30, rng)
    only_two = (dev[0][dev[1] != "ur"], dev[1][dev[1] != "ur"])
    with pytest.raises(ValueError, match=r"probe dev split lacks class\(es\) \['ur'\]"):
        fit_probe(train, only_two, test, Cs=[1.0], seed=0)
    with pytest.raises(ValueError, match="probe test split is empty"):
        fit_probe(train, dev, (np.zeros((0, 6)), np.array([])), Cs=[1.0], seed=0)
    with pytest.raises(ValueError, match="probe train split: 30 feature rows but 29 labels"):
        fit_probe((train[0], train[1][:29]), dev, test, Cs=[1.0], seed=0)
    with pytest.raises(ValueError, match="different feature counts"):
        fit_probe(train, dev, (test[0][:, :5], test[1]), Cs=[1.0], seed=0)
    with pytest.raises(ValueError, match="Cs must be positive"):
        fit_probe(train, dev, test, Cs=[], seed=0)
