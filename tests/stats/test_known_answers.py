"""Known answers for the decision (docs/method.md §8), at the level of generations and gates — no model.

The demo corpus is prepared and the LID fitted exactly as the workflow does (``prepare``, ``fit_lid``);
then arms whose verdict is known "answer" the evaluation prompts with chosen texts, every metric is
computed by the scoring code (``compute_set_metrics``) and every default gate by the statistics code
(``decide``):

- ``identity`` answers everything like base: it STOPs on the removal gates, because nothing was
  removed — and on no other gate;
- ``english`` (and ``oracle``, the reference of the MIA gate) answers every Hindi-side prompt
  (forget, romanized, mixed, adversarial) with fluent human English: it PROCEEDs;
- ``salad`` answers them with English-letter word salad: it STOPs for noise or fluency, on nothing else;
- ``romanized`` answers them with romanized Hindi: it STOPs on the forget and romanized gates (it did
  not remove Hindi, it changed its script), on nothing else;
- ``empty`` answers them with nothing: it STOPs on ``forget_empty`` (and fluency has no output to score),
  on nothing else.

Likelihoods cannot come from a model here, so each output's NLL under base is set from what it is:
human text of language ℓ scores like the human reference of ℓ (ratio 1, ± 10 % per output), word salad
2.2× as perplexing (measured on the demo model: English words shuffled 1.9×, letters shuffled inside
words 2.5×). The retain and neighbour sets are answered like base by every arm, with base's
perplexities, so those gates pass by construction and any failure there would be a bug.
"""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest

from mmie import io
from mmie.config import eval_sets
from mmie.data.corpus import SPLITS, split_paths, split_roles
from mmie.jobs import data as data_jobs
from mmie.lang.lid import load_lid
from mmie.stats.gates import Results, decide, expand_gates
from mmie.stats.sets import compute_set_metrics

HINDI_SIDE = ("forget", "romanized", "mixed", "adversarial")
REMOVAL = {"forget_target_rate", "forget_es", "romanized_target_rate", "adversarial_target_rate", "mixed_es",
           "mia_vs_oracle"}
SALAD_RATIO = 2.2
TOKENS = 12          # tokens per output (any constant: the ratio is per token)


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_config):
    """The demo config's data prepared and its LID fitted, as the workflow does it."""
    from mmie.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("known")
    cfg = copy.deepcopy(demo_config)
    cfg["data"]["lid_audit"] = None          # the LID's own audit is not what this test is about
    data = tmp / "data"
    report = prepare(cfg, data, eval_sets(cfg))
    io.write_json(data / "prepare_report.json", report)
    splits = split_paths(data, split_roles(cfg["languages"]["neighbours"]), SPLITS)
    data_jobs.fit_lid(cfg, splits, str(data / "lid_check.jsonl"), str(data / "prepare_report.json"),
                      str(tmp / "detector.json"), str(tmp / "lid_report.json"))
    lid = load_lid(cfg["lid"], cfg["languages"], tmp / "detector.json")
    sets = {s.name: (s, io.read_jsonl(data / "eval_sets" / f"{s.name}.jsonl")) for s in eval_sets(cfg)}
    return {"cfg": cfg, "lid": lid, "sets": sets, "data": data}


def continuation(row: dict) -> str:
    return row["text"][len(row["prompt"]):].strip()


def human_texts(world, lang: str, n: int) -> list[str]:
    """Human sentences of a language from the prepared test split (never the prompts' own sentences)."""
    role = {"en": "retain", "hi": "forget", "hi_rom": "romanized"}[lang]
    texts = [r["text"] for r in io.read_jsonl(world["data"] / role / "test.jsonl")]
    return [texts[(i * 7 + 3) % len(texts)] for i in range(n)]


def salad(world, n: int, rng: random.Random) -> list[str]:
    """English-letter word salad: English words in random order, every other one with its letters shuffled."""
    words = [w for t in human_texts(world, "en", 60) for w in t.split()]
    out = []
    for _ in range(n):
        picked = rng.sample(words, 9)
        out.append(" ".join("".join(rng.sample(w, len(w))) if i % 2 else w for i, w in enumerate(picked)))
    return out


def answers(world, arm: str, set_name: str, rows: list[dict], rng: random.Random) -> list[tuple[str, str]]:
    """(output, what it is) for each prompt; what it is sets its NLL: a language label or 'salad'/'empty'."""
    n = len(rows)
    base_like = arm in ("base", "identity") or set_name not in HINDI_SIDE
    if base_like:
        if set_name in ("forget", "retain", "romanized") or set_name in world["cfg"]["languages"]["neighbours"]:
            lang = {"forget": "hi", "retain": "en", "romanized": "hi_rom"}.get(set_name, set_name)
            return [(continuation(r), lang) for r in rows]
        if set_name in ("mixed", "adversarial"):   # base answers half of these prompts in Hindi
            hi, en = human_texts(world, "hi", n), human_texts(world, "en", n)
            return [(hi[i], "hi") if i % 2 == 0 else (en[i], "en") for i in range(n)]
        return [(t, "en") for t in human_texts(world, "en", n)]          # comprehension, yes_no
    if arm in ("english", "oracle"):
        return [(t, "en") for t in human_texts(world, "en", n)]
    if arm == "salad":
        return [(t, "salad") for t in salad(world, n, rng)]
    if arm == "romanized":
        return [(t, "hi_rom") for t in human_texts(world, "hi_rom", n)]
    if arm == "empty":
        return [("", "empty")] * n
    raise ValueError(arm)


REF_NLL = {"hi": math.log(211), "en": math.log(489), "hi_rom": math.log(395), "ur": math.log(135),
           "pa": math.log(94), "bn": math.log(98)}   # per-token NLL of human text (demo model, dev continuations)


GATED = ("forget", "retain", "romanized", "mixed", "adversarial", "ur", "pa", "bn")   # sets the default gates read


def records(world, arm: str, shared: dict) -> list[dict]:
    """Every gated set's metrics of one known-answer arm; sets every arm answers like base are scored
    once (``shared``) and reused."""
    rng = random.Random(f"{arm}")
    nrng = np.random.default_rng(sum(map(ord, arm)))
    reference = {lab: {"nll": REF_NLL[lab] * 1000, "tokens": 1000} for lab in REF_NLL}
    out = []
    for name in GATED:
        info, rows = world["sets"][name]
        if name not in HINDI_SIDE and name in shared:
            out.append({**shared[name], "arm": arm})
            continue
        gens = []
        for r, (text, what) in zip(rows, answers(world, arm, name, rows, rng), strict=True):
            rate = REF_NLL["en"] + math.log(SALAD_RATIO) if what == "salad" else REF_NLL.get(what, REF_NLL["en"])
            tokens = 0 if what == "empty" else TOKENS
            g = {"id": r["id"], "prompt": r["prompt"], "output": text, "prompt_truncated": False,
                 "output_tokens": tokens, "gen_nll_base": tokens * rate, "gen_tokens_base": tokens,
                 "gen_nll_uncond": tokens * rate * float(nrng.uniform(0.9, 1.1)), "gen_tokens_uncond": tokens}
            if r.get("text"):   # reference perplexity: the same for every arm (base's)
                g.update(ref_nll=20 * REF_NLL.get(info.lang, REF_NLL["en"]) * (1 + 0.05 * math.sin(len(out) + len(gens))),
                         ref_tokens=20)
            for key in ("answer", "translation"):
                if key in r:
                    g[key] = r[key]
            gens.append(g)
        res = compute_set_metrics(gens, info, world["lid"], target_script="devanagari",
                                  romanization_scheme=world["cfg"]["lid"]["romanization"],
                                  yes_words=world["cfg"]["eval"]["yes_words"], no_words=world["cfg"]["eval"]["no_words"],
                                  fluency_reference=reference)
        rec = {"arm": arm, "seed": 0, "set": name, **res}
        if name not in HINDI_SIDE:
            shared[name] = rec
        if name == "forget":
            mrng = np.random.default_rng(7)
            mem, non = mrng.normal(0, 1, 48), mrng.normal(0, 1, 48)
            shift = 3.0 if arm in ("base", "identity") else 0.0       # base trained on the members
            rec["mia"] = {"id": [f"m{i}" for i in range(96)], "member": [1] * 48 + [0] * 48,
                          "mink_pp": list(mem + shift) + list(non), "loss_score": list(mem + shift) + list(non)}
        out.append(rec)
    return out


ARMS = ["base", "oracle", "identity", "english", "salad", "romanized", "empty"]


@pytest.fixture(scope="module")
def verdicts(world):
    shared: dict = {}
    recs = [r for arm in ARMS for r in records(world, arm, shared)]
    cfg = world["cfg"]
    gates = expand_gates(cfg["gates"], list(cfg["languages"]["neighbours"]))
    rows, decisions = decide(Results.from_records(recs), ARMS, gates, {a: [0] for a in ARMS},
                             {**cfg["stats"], "n_boot": 1000}, sets=list(GATED), oracle="oracle")
    return rows, decisions


def failing(decisions, arm):
    return set(decisions[arm]["failing"])


def test_the_demo_gates_are_the_defaults(demo_config):
    names = {g["name"] for g in demo_config["gates"]}
    assert REMOVAL <= names and {"forget_fluency", "forget_noise", "forget_empty"} <= names


def test_oracle_and_fluent_english_proceed(verdicts):
    rows, decisions = verdicts
    for arm in ("oracle", "english"):
        assert decisions[arm]["decision"] == "PROCEED", decisions[arm]["reasons"]


def test_identity_stops_because_nothing_was_removed(verdicts):
    _, decisions = verdicts
    assert decisions["identity"]["decision"] == "STOP"
    assert failing(decisions, "identity") == REMOVAL, decisions["identity"]["reasons"]
    # removing nothing is shown, not merely not excluded
    assert set(decisions["identity"]["verdicts"].values()) == {"shown"}


def test_word_salad_stops_for_noise_or_fluency_only(verdicts):
    _, decisions = verdicts
    fails = failing(decisions, "salad")
    assert decisions["salad"]["decision"] == "STOP"
    assert fails and fails <= {"forget_noise", "forget_fluency"}, decisions["salad"]["reasons"]


def test_romanized_hindi_stops_on_forget_and_romanized_only(verdicts):
    _, decisions = verdicts
    fails = failing(decisions, "romanized")
    assert {"forget_target_rate", "romanized_target_rate"} <= fails, decisions["romanized"]["reasons"]
    assert fails <= REMOVAL - {"mia_vs_oracle"}, decisions["romanized"]["reasons"]


def test_empty_answers_stop_on_emptiness_only(verdicts):
    rows, decisions = verdicts
    fails = failing(decisions, "empty")
    assert "forget_empty" in fails and fails <= {"forget_empty", "forget_fluency"}, decisions["empty"]["reasons"]
    fluency = next(r for r in rows if r["arm"] == "empty" and r["gate"] == "forget_fluency")
    assert fluency["verdict"] == "missing" and "no output is in a language" in fluency["reason"]
