"""Text metrics and per-set metrics (docs/method.md §5)."""
import math

import pytest

from mmie.stats.sets import SetInfo, compute_set_metrics
from mmie.stats.text import (
    distinct_n,
    extraction_strength,
    is_repetitive,
    mean_distinct_n,
    ngram_entropy,
    target_letters,
)


def ident(text):
    """A toy identifier: target when more than half of the words are HINDI."""
    words = text.split()
    return ("hi" if 2 * words.count("HINDI") > len(words) else "en"), 1.0


def is_t(label):
    return label == "hi"


@pytest.mark.parametrize("text,expected", [
    ("HINDI HINDI HINDI HINDI", 1.0),        # fully target
    ("a b HINDI HINDI", 2 / 4),              # the span starts at word 3: its opening "b HINDI" is no target
    ("a b c", 0.0),                          # never
    ("", 0.0),                               # empty
    ("   ", 0.0),
    ("a b c HINDI", 1 / 4),
    ("a b c HI", 0.0),                       # a span needs min_letters (4) letters
])
def test_extraction_strength_definition(text, expected):
    assert extraction_strength(text, ident, is_t) == pytest.approx(expected)


def script_ident(text):
    """The old LID's rule: a text whose letters are mostly Devanagari is Hindi."""
    from mmie.lang.scripts import dominant_script

    return ("hi" if dominant_script(text)[0] == "devanagari" else "en"), 1.0


@pytest.mark.parametrize("text,expected", [
    # a lone combining mark before English word salad is no extraction (it scored 1.0)
    ("ों for is soomes and stay but the set do is aron.", 0.0),
    ("की for is soomes and stay but the set do is aron.", 0.0),    # one short token (2 letters): none
    ("मेरी माँ ने आज खाना बनाया।", 1.0),                          # fully target
    ("ों मेरी माँ ने आज खाना बनाया।", 6 / 7),                      # starts at the first real word
    ("I think that मेरी माँ ने आज खाना बनाया।", 6 / 9),            # English then Hindi: the Hindi fraction
    ("मेरी माँ ने and then English words follow here", 1.0),       # Hindi then English: from the start
    ("I said इसलिए and left", 3 / 5),                              # one Hindi word of 5 letters is a span
])
def test_extraction_strength_starts_at_a_real_target_span(text, expected):
    assert extraction_strength(text, script_ident, is_t) == pytest.approx(expected)


def test_extraction_strength_labels_each_run_once():
    """A fully-target output is identified twice (its run and the run's opening), not once per prefix."""
    calls = []

    def counting(text):
        calls.append(text)
        return script_ident(text)

    text = " ".join(["मेरी माँ ने आज खाना बनाया।"] * 10)
    assert extraction_strength(text, counting, is_t) == 1.0 and calls == [text, "मेरी माँ"]


def test_script_share_repetition_entropy():
    assert target_letters("नमस्ते hello", "devanagari") == (6, 11)
    assert is_repetitive("है है है है है") and not is_repetitive("one two three four five")
    assert not is_repetitive("too short")
    assert ngram_entropy("") is None
    assert ngram_entropy("a a a a") == pytest.approx((0 + 0 + 0) / 3)
    assert ngram_entropy("a b c d") > 1.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert mean_distinct_n(["a b a b", "x y"], 2) == pytest.approx((2 / 3 + 1) / 2)
    assert distinct_n(["a"], 2) is None


class FakeLID:
    labels = ["en", "hi", "hi_rom", "und", "ur"]

    def identify(self, text):
        if any("\u0900" <= c <= "\u097f" for c in text):
            return "hi", 1.0
        if "mera" in text:
            return "hi_rom", 1.0
        return ("en", 1.0) if text.strip() else ("und", 1.0)

    def is_target(self, label):
        return label in ("hi", "hi_rom")


def rec(i, out, nll=2.0, toks=4, ref=True):
    r = {"id": f"x{i}", "prompt": "p", "output": out, "prompt_tokens": 3, "output_tokens": len(out.split()),
         "prompt_truncated": False, "gen_nll_base": nll, "gen_tokens_base": toks}
    if ref:
        r.update(ref_nll=10.0 * (i + 1), ref_tokens=5 * (i + 1), ref_truncated=False)
    return r


def test_set_metrics_values_and_token_weighted_ppl():
    records = [rec(0, "मेरा नाम"), rec(1, "hello there"), rec(2, "mera naam raj")]
    res = compute_set_metrics(records, SetInfo("forget", "forget", "hi"), FakeLID(),
                              target_script="devanagari", romanization_scheme="iast_plain")
    m = res["metrics"]
    assert m["target_rate"] == pytest.approx(2 / 3)
    assert m["lang_share_en"] == pytest.approx(1 / 3) and m["lang_share_hi_rom"] == pytest.approx(1 / 3)
    # token-weighted: (10+20+30)/(5+10+15) = 2
    assert m["ppl"] == pytest.approx(math.exp(60 / 30))
    assert m["gen_ppl_base"] == pytest.approx(math.exp(6 / 12))
    assert m["target_rate_romanized"] == pytest.approx(2 / 3)   # romanizing Devanagari keeps it the target
    assert res["per_prompt"]["id"] == ["x0", "x1", "x2"]
    assert res["failures"] == {}
    assert "own_language_rate" not in m


def test_neighbour_own_language_rate():
    records = [rec(0, "hello"), rec(1, "मेरा")]
    res = compute_set_metrics(records, SetInfo("ur", "neighbour", "en"), FakeLID(),
                              target_script="devanagari", romanization_scheme="iast_plain")
    assert res["metrics"]["own_language_rate"] == pytest.approx(0.5)


def test_failed_metric_is_recorded_never_a_stand_in():
    records = [rec(0, "", nll=0.0, toks=0, ref=False), rec(1, "  ", nll=0.0, toks=0, ref=False)]
    res = compute_set_metrics(records, SetInfo("mixed", "prompts", None), FakeLID(),
                              target_script="devanagari", romanization_scheme="iast_plain")
    for name in ("gen_ppl_base", "fluency_entropy", "target_script_share"):
        assert name not in res["metrics"] and name in res["failures"]
    assert res["metrics"]["empty_share"] == 1.0
    with pytest.raises(ValueError, match="empty set"):
        compute_set_metrics([], SetInfo("mixed", "prompts", None), FakeLID(), target_script="devanagari",
                            romanization_scheme="iast_plain")


def test_yes_no_is_whole_word_and_script_aware():
    from mmie.stats.text import yes_no

    yes, no = ["yes", "haan", "हाँ"], ["no", "nahin", "नहीं"]
    assert yes_no("Yes, it does.", yes, no) == "yes"
    assert yes_no("I know nothing about it", yes, no) is None       # 'no' inside words is no answer
    assert yes_no("yesterday was fine", yes, no) is None
    assert yes_no("जी नहीं, ऐसा नहीं है", yes, no) == "no"
    assert yes_no("नहींं", yes, no) is None                          # a longer Devanagari word
    assert yes_no("हाँ बिल्कुल", yes, no) == "yes"
    # a sentence mark ends the word: the danda, the Urdu full stop (they were counted as letters once)
    assert yes_no("हाँ।", yes, no) == "yes" and yes_no("नहीं।", yes, no) == "no"
    assert yes_no("جی ہاں۔", ["ہاں"], ["نہیں"]) == "yes"
    assert yes_no("हाँजी", yes, no) is None                            # still whole words only


def test_comprehension_and_yes_no_set_metrics():
    from sacrebleu.metrics import CHRF

    refs = ["My name is Rahul and I live in Delhi.", "The train leaves at seven in the morning."]
    outs = ["my name is Rahul, I live in Delhi", "मेरा नाम"]
    recs = [dict(rec(i, o, ref=False), translation=r) for i, (o, r) in enumerate(zip(outs, refs, strict=True))]
    res = compute_set_metrics(recs, SetInfo("comprehension", "comprehension", "en"), FakeLID(),
                              target_script="devanagari", romanization_scheme="iast_plain")
    # sacrebleu's corpus-level CHRF on one pair is that pair's chrF: an independent route to each value
    expect = [CHRF().corpus_score([o], [[r]]).score for o, r in zip(outs, refs, strict=True)]
    mismatched = [CHRF().corpus_score([o], [[r]]).score for o, r in zip(outs, refs[1:] + refs[:1], strict=True)]
    assert res["per_prompt"]["chrf"] == pytest.approx(expect)
    assert res["metrics"]["comprehension_chrf"] == pytest.approx(sum(expect) / 2)
    assert res["metrics"]["comprehension_chrf_gain"] == pytest.approx((sum(expect) - sum(mismatched)) / 2)
    assert expect[0] > 50 and expect[1] == 0.0          # a good translation scores high, Hindi script none
    recs = [dict(rec(0, "yes it is", ref=False), answer="yes"), dict(rec(1, "no", ref=False), answer="yes"),
            dict(rec(2, "maybe", ref=False), answer="no")]
    res = compute_set_metrics(recs, SetInfo("yes_no", "yes_no", None), FakeLID(), target_script="devanagari",
                              romanization_scheme="iast_plain", yes_words=["yes"], no_words=["no"])
    assert res["metrics"]["yes_no_accuracy"] == pytest.approx(1 / 3)
    assert res["metrics"]["yes_no_unparsed_share"] == pytest.approx(1 / 3)
