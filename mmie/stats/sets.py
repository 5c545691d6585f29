"""Metrics of one evaluation set for one arm and seed, from stored generations (no model needed).

A metric that cannot be computed is *not* given a stand-in value: it is left out of ``metrics`` and
its reason is recorded in ``failures``, which the report shows and the gates treat as failing."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from mmie.stats.text import extraction_strength, is_empty, is_repetitive, ngram_entropy, target_letters, yes_no

if TYPE_CHECKING:   # mmie.config imports SetInfo from here: no LID or transliteration at config time
    from mmie.lang.lid import LID


@dataclass(frozen=True)
class SetInfo:
    name: str      # forget, retain, romanized, mixed, adversarial, or a neighbour code
    kind: str      # "forget" | "retain" | "romanized" | "prompts" | "neighbour" | "comprehension" | "yes_no"
    lang: str | None  # the language the prompts are written in (None for mixed/adversarial)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compute_set_metrics(records: list[dict], info: SetInfo, lid: LID, *, target_script: str,
                        romanization_scheme: str, yes_words: Sequence[str] = (), no_words: Sequence[str] = (),
                        fluency_reference: dict[str, dict] | None = None, extraction: dict | None = None) -> dict:
    """Returns {"metrics": {...}, "per_prompt": {...}, "failures": {...}, "diagnostics": {...}}.

    ``fluency_reference``: per LID label, the base model's NLL and token count of human text in that
    language (the evaluate job's manifest); with it, and each record's unconditional NLL under base
    (``gen_nll_uncond``/``gen_tokens_uncond``), the set gets ``fluency_ratio`` (see ``fluency``).
    ``extraction``: ``extraction_strength``'s settings (config ``lid.extraction``; its defaults when None)."""
    from mmie.lang.translit import romanize

    if not records:
        raise ValueError(f"set {info.name!r} has no generations: refusing to compute metrics on an empty set")
    outputs = [r["output"] for r in records]
    metrics: dict[str, float] = {}
    failures: dict[str, str] = {}
    per: dict[str, list] = {"id": [r["id"] for r in records]}

    labels = [lid.identify(o)[0] for o in outputs]
    per["label"] = labels
    per["target"] = [int(lid.is_target(lab)) for lab in labels]
    es_kw = dict(extraction or {})
    per["es"] = [extraction_strength(o, lid.identify, lid.is_target, **es_kw) for o in outputs]
    metrics["target_rate"] = _mean(per["target"])
    metrics["es"] = _mean(per["es"])

    letters = [target_letters(o, target_script) for o in outputs]
    per["target_letters"] = [a for a, _ in letters]
    per["letters"] = [b for _, b in letters]
    total_letters = sum(per["letters"])
    if total_letters:
        metrics["target_script_share"] = sum(per["target_letters"]) / total_letters
    else:
        failures["target_script_share"] = "no output of this set contains a letter"

    roman = [romanize(o, romanization_scheme, target_script) for o in outputs]
    rlabels = [lid.identify(o)[0] for o in roman]
    per["target_romanized"] = [int(lid.is_target(lab)) for lab in rlabels]
    per["es_romanized"] = [extraction_strength(o, lid.identify, lid.is_target, **es_kw) for o in roman]
    metrics["target_rate_romanized"] = _mean(per["target_romanized"])
    metrics["es_romanized"] = _mean(per["es_romanized"])

    dist = Counter(labels)
    for lab in sorted(set(lid.labels) | set(dist)):
        metrics[f"lang_share_{lab}"] = dist.get(lab, 0) / len(labels)

    if info.kind == "neighbour":
        per["own_language"] = [int(lab == info.lang) for lab in labels]
        metrics["own_language_rate"] = _mean(per["own_language"])
    if info.kind == "comprehension":
        # asked to translate target-language text into the retain language: scored against the reference
        # translation (chrF), and against another prompt's reference (what the output shares with any
        # text of that language by chance): comprehension is the difference
        from mmie.stats.translation import chrf

        refs = [r["translation"] for r in records]
        per["chrf"] = [chrf(o, ref) for o, ref in zip(outputs, refs, strict=True)]
        per["chrf_mismatched"] = [chrf(o, refs[(i + 1) % len(refs)]) for i, o in enumerate(outputs)]
        per["chrf_gain"] = [a - b for a, b in zip(per["chrf"], per["chrf_mismatched"], strict=True)]
        metrics["comprehension_chrf"] = _mean(per["chrf"])
        metrics["comprehension_chrf_gain"] = _mean(per["chrf_gain"])
    if info.kind == "yes_no":
        parsed = [yes_no(o, yes_words, no_words) for o in outputs]
        per["yes_no_correct"] = [int(p == r["answer"]) for p, r in zip(parsed, records, strict=True)]
        per["yes_no_unparsed"] = [int(p is None) for p in parsed]
        majority = max(("yes", "no"), key=lambda a: sum(r["answer"] == a for r in records))
        # chance level of the set: always giving its majority answer (mmie.stats.gates.measurability)
        per["yes_no_majority"] = [int(r["answer"] == majority) for r in records]
        metrics["yes_no_accuracy"] = _mean(per["yes_no_correct"])
        metrics["yes_no_unparsed_share"] = _mean(per["yes_no_unparsed"])

    # perplexity of the set's reference texts (token-weighted, padding masked upstream)
    if any("ref_nll" in r for r in records):
        per["ref_nll"] = [r["ref_nll"] for r in records]
        per["ref_tokens"] = [r["ref_tokens"] for r in records]
        tokens = sum(per["ref_tokens"])
        if tokens:
            metrics["ppl"] = math.exp(sum(per["ref_nll"]) / tokens)
        else:
            failures["ppl"] = "no reference token could be scored"

    if any("kl" in r for r in records):
        per["kl"] = [r["kl"] for r in records]
        per["kl_tokens"] = [r["kl_tokens"] for r in records]
        if sum(per["kl_tokens"]):
            metrics["token_kl"] = sum(per["kl"]) / sum(per["kl_tokens"])
        else:
            failures["token_kl"] = "no retain token could be scored"

    # fluency of outputs under the base model, on the non-empty outputs only: an empty output has no
    # fluency, and counting its (few, whitespace) tokens would let a collapsed arm look fluent. The
    # number of empty outputs is reported next to it (diagnostics.gen_ppl_base) and gated separately.
    per["empty"] = [int(is_empty(o)) for o in outputs]
    per["repetitive"] = [int(is_repetitive(o)) for o in outputs]
    per["gen_nll_base"] = [0.0 if e else r["gen_nll_base"] for r, e in zip(records, per["empty"], strict=True)]
    per["gen_tokens"] = [0 if e else r["gen_tokens_base"] for r, e in zip(records, per["empty"], strict=True)]
    gen_tokens = sum(per["gen_tokens"])
    n_empty = sum(per["empty"])
    if gen_tokens:
        metrics["gen_ppl_base"] = math.exp(sum(per["gen_nll_base"]) / gen_tokens)
    elif n_empty == len(outputs):
        failures["gen_ppl_base"] = (f"every output is empty ({n_empty} of {len(outputs)}): nothing to score under "
                                    f"the base model (see empty_share)")
    else:
        failures["gen_ppl_base"] = (f"no non-empty output has a token to score under the base model "
                                    f"({n_empty} of {len(outputs)} outputs empty)")
    if fluency_reference is not None:
        fluency(records, labels, per["empty"], fluency_reference, metrics, failures, per)
    metrics["empty_share"] = _mean(per["empty"])
    metrics["repetitive_share"] = _mean(per["repetitive"])
    ents = [ngram_entropy(o) for o in outputs]
    per["entropy"] = ents
    non_empty = [e for e in ents if e is not None]
    if non_empty:
        metrics["fluency_entropy"] = _mean(non_empty)
    else:
        failures["fluency_entropy"] = "every output is empty"

    diagnostics = {
        "n_prompts": len(records),
        "prompt_truncated": sum(bool(r["prompt_truncated"]) for r in records),
        "ref_truncated": sum(bool(r.get("ref_truncated")) for r in records),
        "empty_outputs": n_empty,
        "gen_ppl_base": {"outputs_scored": sum(1 for t in per["gen_tokens"] if t), "empty_outputs": n_empty,
                         "outputs": len(outputs), "tokens": gen_tokens},
        "mean_output_tokens": _mean([r["output_tokens"] for r in records]),
    }
    return {"metrics": metrics, "per_prompt": per, "failures": failures, "diagnostics": diagnostics}


def fluency(records: list[dict], labels: list[str], empty: list[int], reference: dict[str, dict], metrics: dict,
            failures: dict, per: dict) -> None:
    """``fluency_ratio``: how much more perplexing the outputs are under the base model than human text
    of the same language, ``exp(Σ_i (NLL_i − T_i·r(ℓ_i)) / Σ_i T_i)`` over the non-empty outputs whose
    LID label ℓ_i is a language, where NLL_i/T_i is output i's NLL/token count under base *without* its
    prompt and r(ℓ) the per-token NLL of human text in ℓ (continuations of dev texts, scored the same
    way). Fluent text in any language scores ≈ 1 or below; word salad scores higher. Not conditioned on
    the prompt: a fluent English answer to a Hindi prompt is not penalised for leaving Hindi. Noise,
    ``und`` and empty outputs have no language to compare with: they are counted by their own metrics
    (``lang_share_noise``, ``empty_share``) and left out here; when no output is left, the metric is a
    recorded failure."""
    excess, tokens = [], []
    for r, lab, e in zip(records, labels, empty, strict=True):
        ref = reference.get(lab)
        if e or ref is None or not r.get("gen_tokens_uncond"):
            excess.append(0.0)
            tokens.append(0)
            continue
        rate = ref["nll"] / ref["tokens"]
        excess.append(r["gen_nll_uncond"] - r["gen_tokens_uncond"] * rate)
        tokens.append(r["gen_tokens_uncond"])
    per["fluency_excess"], per["fluency_tokens"] = excess, tokens
    if sum(tokens):
        metrics["fluency_ratio"] = math.exp(sum(excess) / sum(tokens))
    else:
        failures["fluency_ratio"] = (f"no output is in a language with a fluency reference (labels: "
                                     f"{dict(Counter(labels))}; references: {sorted(reference)}): every output is "
                                     f"empty, noise or undetermined")
