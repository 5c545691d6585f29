"""Memory back-off in every model pass: an injected out-of-memory error halves the batch and the
results equal those of a run without it; the halvings are recorded; at batch size 1 it is an error."""


import numpy as np
import pytest

from conftest import oom_above
from mmie.model.generation import Decoding, generate
from mmie.model.likelihood import mia_scores, score_sequences, token_kl


def _numbers(rows: list[dict]) -> list[float]:
    return [float(v) for r in rows for _, v in sorted(r.items())]


def _texts(tok, demo_texts, n=10):
    return [tok(t, add_special_tokens=False)["input_ids"][:30] for t in demo_texts["hi"][:n // 2] + demo_texts["en"][:n // 2]]


def _sites(model, tok, demo_texts):
    from mmie.arms import Arm
    from mmie.sae.activations import collect

    seqs = _texts(tok, demo_texts)
    texts = demo_texts["hi"][:5] + demo_texts["en"][:5]
    arm = Arm(name="prompt", method="prompt", model=model, system="Respond only in English.")
    items = [{"id": str(i), "prompt": t[:40]} for i, t in enumerate(texts)]
    dec = Decoding(max_new_tokens=4, batch_size=8)
    return {
        "score": lambda log: score_sequences(model, tok.pad_token_id, [[]] * len(seqs), seqs, batch_size=8, oom_log=log),
        "token_kl": lambda log: token_kl(arm, tok, texts, batch_size=8, oom_log=log),
        "mia": lambda log: mia_scores(model, tok.pad_token_id, seqs, batch_size=8, oom_log=log, chunk=7),
        "activations": lambda log: [t.tolist() for t in collect(model, tok, texts, [1], max_length=32, batch_size=8,
                                                                  oom_log=log)[1]],
        "generate": lambda log: [g["output"] for g in generate(model, tok, items, dec, oom_log=log)],
    }


@pytest.mark.parametrize("site", ["score", "token_kl", "mia", "activations", "generate"])
def test_an_out_of_memory_error_halves_the_batch_and_changes_no_result(tiny_lm, demo_texts, site):
    model, tok = tiny_lm
    run = _sites(model, tok, demo_texts)[site]
    clean_log: list = []
    clean = run(clean_log)
    assert clean_log == []
    log: list = []
    with oom_above(model, 2):
        backed_off = run(log)
    assert [e["new_batch_size"] for e in log] == [4, 2] and all(e["where"] for e in log)
    if site == "generate":
        assert backed_off == clean
    elif site == "activations":   # padding widths change with the batch: equal up to float reassociation
        for got, want in zip(backed_off, clean, strict=True):
            np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-5, atol=1e-6)
    else:   # batch composition changes padding widths: equal up to float reassociation
        assert [sorted(r) for r in backed_off] == [sorted(r) for r in clean]
        # token KL is a small difference of log-probabilities: on an AVX-512 Intel Xeon its per-text
        # values moved by up to 5e-7 absolute (2.8e-5 relative) between batch sizes; far below any effect
        assert _numbers(backed_off) == pytest.approx(_numbers(clean), rel=1e-5, abs=2e-6)
    with oom_above(model, 0), pytest.raises(RuntimeError, match="out of memory at batch size 1"):
        run([])


def test_mia_in_chunks_equals_the_whole_vocabulary_at_once(tiny_lm, demo_texts):
    model, tok = tiny_lm
    seqs = _texts(tok, demo_texts)
    whole = mia_scores(model, tok.pad_token_id, seqs, batch_size=4, chunk=10_000)
    chunked = mia_scores(model, tok.pad_token_id, seqs, batch_size=4, chunk=3)
    assert _numbers(chunked) == pytest.approx(_numbers(whole), rel=1e-6)
