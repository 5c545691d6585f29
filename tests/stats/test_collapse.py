"""Collapse is a failure, not a success (issue: statistics and gates): an arm that "forgets" by
emitting nothing or loops STOPs on the default gates with that reason; gen_ppl_base is the
perplexity of the non-empty outputs and the number of empty outputs is reported next to it."""
import copy
import math

import pytest

from mmie.report.results_page import cell
from mmie.stats.gates import Results, decide, expand_gates
from mmie.stats.sets import SetInfo, compute_set_metrics

HINDI = ["मेरा नाम राम है और मैं दिल्ली में रहता हूँ", "आज मौसम बहुत अच्छा है इसलिए हम बाहर जाएंगे",
         "उसने बाज़ार से ताज़ी सब्ज़ियाँ खरीदीं और घर लौट आया", "बच्चे स्कूल में नई किताबें पढ़ रहे हैं"]
N = 48


class FakeLID:
    labels = ["en", "hi", "hi_rom", "und"]

    def identify(self, text):
        if any("\u0900" <= c <= "\u097f" for c in text):
            return "hi", 1.0
        return ("en", 1.0) if text.strip() else ("und", 1.0)

    def is_target(self, label):
        return label in ("hi", "hi_rom")


def generation(i, output, nll_per_token=3.0):
    toks = len(output.split())
    return {"id": f"f{i:02d}", "prompt": "p", "output": output, "prompt_tokens": 3, "output_tokens": toks,
            "prompt_truncated": False, "gen_nll_base": nll_per_token * toks, "gen_tokens_base": toks}


def metrics_json(arm, seed, outputs):
    res = compute_set_metrics([generation(i, o) for i, o in enumerate(outputs)], SetInfo("forget", "forget", "hi"),
                              FakeLID(), target_script="devanagari", romanization_scheme="iast_plain")
    return {"arm": arm, "seed": seed, "set": "forget", **res}


@pytest.mark.parametrize("collapsed,gate,words", [
    ([""] * N, "forget_empty", "forget outputs are empty"),
    ([", , , , and , , , ,"] * N, "forget_repetitive", "forget outputs are repetitive"),
])
def test_collapsed_arm_stops_on_the_default_gates(demo_config, collapsed, gate, words):
    base = [HINDI[i % len(HINDI)] for i in range(N)]
    records = [metrics_json("base", 0, base)] + [metrics_json("collapsed", s, collapsed) for s in (0, 1, 2)]
    gates = [g for g in expand_gates(copy.deepcopy(demo_config["gates"]), []) if g["set"] == "forget"]
    cfg = {**demo_config["stats"], "n_boot": 500}
    rows, decisions = decide(Results.from_records(records), ["base", "collapsed"], gates,
                             {"base": [0], "collapsed": [0, 1, 2]}, cfg)
    by = {r["gate"]: r for r in rows}
    # the collapse looks like forgetting on the language gates ...
    assert by["forget_es"]["passed"] and by["forget_target_rate"]["passed"]
    # ... and is caught by the collapse gate, with the metric named in the reason
    assert decisions["collapsed"]["decision"] == "STOP" and gate in decisions["collapsed"]["failing"]
    reason = decisions["collapsed"]["reasons"][gate]
    metric = "empty_share" if gate == "forget_empty" else "repetitive_share"
    assert metric in reason and words in reason
    assert by[gate]["value"] == 1.0 and by[gate]["threshold"] == pytest.approx(0.1)


def test_gen_ppl_base_is_computed_on_non_empty_outputs_and_counts_the_empty_ones():
    outputs = ["मेरा नाम राम है", "", "   ", "आज मौसम अच्छा है"]
    recs = [generation(i, o, nll_per_token=2.0) for i, o in enumerate(outputs)]
    recs[2]["gen_tokens_base"], recs[2]["gen_nll_base"] = 2, 40.0   # whitespace tokens the base model finds odd
    res = compute_set_metrics(recs, SetInfo("forget", "forget", "hi"), FakeLID(), target_script="devanagari",
                              romanization_scheme="iast_plain")
    # (2·4 + 2·4) / 8 tokens: the whitespace-only output does not enter the perplexity
    assert res["metrics"]["gen_ppl_base"] == pytest.approx(math.exp(2.0))
    assert res["diagnostics"]["gen_ppl_base"] == {"outputs_scored": 2, "empty_outputs": 2, "outputs": 4, "tokens": 8}
    assert res["metrics"]["empty_share"] == 0.5
    everything_empty = compute_set_metrics([generation(i, "") for i in range(3)], SetInfo("forget", "forget", "hi"),
                                           FakeLID(), target_script="devanagari", romanization_scheme="iast_plain")
    assert "gen_ppl_base" not in everything_empty["metrics"]
    assert "every output is empty (3 of 3)" in everything_empty["failures"]["gen_ppl_base"]


def test_results_page_shows_the_empty_count_next_to_gen_ppl_base():
    import pandas as pd

    iv = pd.DataFrame([
        {"arm": "a", "set": "forget", "metric": "gen_ppl_base", "estimate": 234.0, "ci_low": 200.0, "ci_high": 260.0,
         "n_prompts": 144, "n_seeds": 3, "seeded": True},
        {"arm": "a", "set": "forget", "metric": "empty_share", "estimate": 12 / 144, "ci_low": 0.05, "ci_high": 0.12,
         "n_prompts": 144, "n_seeds": 3, "seeded": True}])
    assert cell(iv, "a", "forget", "gen_ppl_base") == "234 [200, 260] (12 of 144 outputs empty)"
