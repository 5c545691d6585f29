"""``probe``: is the target language still readable from the hidden states? A multinomial
logistic-regression probe per layer on mean-pooled hidden states tells target-language text from
retain and neighbour text. It is fitted on train texts, its regularisation ``C`` chosen on dev texts,
and scored on test texts (docs/method.md "Removed or hidden?"). An arm that removed the language
leaves it no easier to read than the oracle does; one that only hides it (an output-side edit, a
suppressed logit) leaves the probe's test accuracy where base has it.

The hidden states are read with the arm switched on by the caller: they are recorded by forward hooks
on the decoder layers that this module registers for each call, after the arm's own hooks, so every
edit an arm makes to a layer's output is in what the probe reads (``output_hidden_states`` is not
used: transformers records it with hooks it installs once, the first time it is asked, so an arm
switched on later would be missed, and its last entry is the final norm's output, not the block's)."""

from __future__ import annotations

import warnings

from mmie.attacks import Attack

ATTACK = Attack(name="probe", summary="a logistic-regression probe per layer reads the target language from hidden states",
                strength="layer", reads="train texts (fit), dev texts (regularisation), test texts (score)")


def hidden_means(model, tok, texts: list[str], *, batch_size: int, max_length: int,
                 layers: list[int] | None = None):
    """``[n_layers, n_texts, d]`` float64: per text, the mean over its tokens of the residual stream
    after each decoder block (layer ``i``: the output of block ``i``, with every hook on it applied;
    the embedding output is not a layer). ``layers``: those blocks, in that order (default: all).

    Texts are encoded as the activation cache encodes them (the tokenizer's special prefix, cut at
    ``max_length`` tokens); the mean is over the text's own tokens: padding and the special prefix
    (the same hidden state in every text) are left out, as in ``mmie.sae.activations``. Computed
    without gradients (inference mode), in batches with the memory back-off."""
    import numpy as np

    from mmie.errors import DataError
    from mmie.model.hooks import check_layers, decoder_layers
    from mmie.sae.activations import collect

    if not texts:
        raise DataError("probe: no texts to read hidden states from")
    layers = list(range(len(decoder_layers(model)))) if layers is None else [int(x) for x in layers]
    if not layers:
        raise ValueError("probe: an empty list of layers")
    check_layers(model, layers)
    got = collect(model, tok, list(texts), layers, max_length=max_length, batch_size=batch_size, pooled=True,
                  desc="probe hidden states")
    return np.stack([got[layer][0].double().numpy() for layer in layers])


def _check_split(name: str, X, y):
    import numpy as np

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if X.ndim != 2 or y.ndim != 1:
        raise ValueError(f"probe {name} split: features must be [items, features] and labels [items], "
                         f"got {X.shape} and {y.shape}")
    if len(X) == 0:
        raise ValueError(f"probe {name} split is empty")
    if len(X) != len(y):
        raise ValueError(f"probe {name} split: {len(X)} feature rows but {len(y)} labels")
    if not np.isfinite(X).all():
        raise FloatingPointError(f"probe {name} split: non-finite features")
    return X, y


def fit_probe(train: tuple, dev: tuple, test: tuple, *, Cs: list[float], seed: int) -> dict:
    """A multinomial logistic-regression probe (L2, lbfgs) on standardised features (mean and scale
    from ``train`` only), fitted on ``train`` once per ``C`` in ``Cs``; the ``C`` with the best
    ``dev`` accuracy is kept (ties: the smaller ``C``, the stronger regularisation), nothing is refit
    on dev or test, and ``test`` is only scored. Each split is ``(X [items, features], y [items])``;
    every split must hold every class.

    Returns ``C``, ``dev_accuracy``, ``test_accuracy``, ``classes`` (sorted; labels as given), ``test_correct`` and
    ``test_pred`` (per test item, in order), ``per_class_recall`` (test), ``dev_accuracy_by_C`` and
    ``converged`` (whether lbfgs converged for the chosen ``C``: recorded, not hidden)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    splits = {name: _check_split(name, *xy) for name, xy in (("train", train), ("dev", dev), ("test", test))}
    widths = {name: X.shape[1] for name, (X, _) in splits.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"probe splits have different feature counts: {widths}")
    classes = sorted(set().union(*(set(y.tolist()) for _, y in splits.values())))
    if len(classes) < 2:
        raise ValueError(f"probe: one class only ({classes}); the probe needs at least two")
    for name, (_, y) in splits.items():
        lacking = [c for c in classes if c not in set(y.tolist())]
        if lacking:
            raise ValueError(f"probe {name} split lacks class(es) {lacking} (classes: {classes})")
    Cs = sorted(float(c) for c in Cs)
    if not Cs or any(not c > 0 for c in Cs):
        raise ValueError(f"probe: Cs must be positive and non-empty, got {Cs}")

    (Xtr, ytr), (Xdv, ydv), (Xte, yte) = splits["train"], splits["dev"], splits["test"]
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xdv, Xte = scaler.transform(Xtr), scaler.transform(Xdv), scaler.transform(Xte)

    best = None                      # (dev accuracy, C, fitted, converged); Cs ascending: ties keep the smaller C
    by_c = {}
    for c in Cs:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(Xtr, ytr)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        acc = float((clf.predict(Xdv) == ydv).mean())
        by_c[c] = acc
        if best is None or acc > best[0]:
            best = (acc, c, clf, converged)
    assert best is not None   # Cs is not empty (checked above)
    dev_acc, c, clf, converged = best
    pred = clf.predict(Xte)
    correct = (pred == yte).astype(int)
    recall = {str(k): float(correct[yte == k].mean()) for k in classes}
    return {"C": c, "dev_accuracy": dev_acc, "test_accuracy": float(correct.mean()), "classes": classes,
            "test_correct": correct.tolist(), "test_pred": pred.tolist(),
            "per_class_recall": recall, "dev_accuracy_by_C": {str(k): v for k, v in by_c.items()},
            "converged": converged}
