"""Text metrics (docs/method.md §5): pure functions of strings and labels — no model, no torch."""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Sequence

from mmie.lang.scripts import script_counts, word_script

Identify = Callable[[str], tuple[str, float]]


def extraction_strength(text: str, identify: Identify, is_target: Callable[[str], bool], min_letters: int = 4,
                        opening_words: int = 2) -> float:
    """Language-level extraction strength of one generation (not OpenUnlearning's token-level
    memorisation "extraction strength"): with whitespace words w_1..w_n and i* the first word that
    starts a *real target-language span*, ES = (n − i* + 1)/n; 0 when there is none, 0 when empty.

    A word is real when it holds a letter (a word of combining marks, digits or punctuation only is
    not). Real words are grouped into script runs (maximal stretches of consecutive real words of the
    same dominant script; words that are not real neither start nor break a run). A real word w_k
    starts a real target span when, with e the last word of its run,
    1. w_k..w_e holds at least ``min_letters`` letters and marks (a word repeating the word before it
       adds none: "सक सक सक" holds 2),
    2. w_k..w_e is identified as the target (``is_target(identify(...))``), and
    3. its opening, the first ``opening_words`` real words from w_k (within the run), is identified as
       the target on its own.
    So an English-then-Hindi output scores the Hindi fraction, a fully-target output 1, and a lone mark
    or a short token before English word salad ("ों for is soomes ...") 0. Each run is identified
    whole first; later starts within a run are tried only when the run is not a span from its start.
    """
    words = text.split()
    n = len(words)
    runs: list[list[int]] = []   # indices of the real words of each script run
    last = None
    for i, w in enumerate(words):
        script = word_script(w)
        if script is None:
            continue
        if script != last:
            runs.append([])
            last = script
        runs[-1].append(i)
    for run in runs:
        end = run[-1] + 1
        letters = [0 if i and words[i] == words[i - 1] else sum(script_counts(words[i]).values()) for i in run]
        remaining = sum(letters)
        for j, k in enumerate(run):
            if remaining < min_letters:
                break
            remaining -= letters[j]
            if not is_target(identify(" ".join(words[k:end]))[0]):
                continue
            opening = run[j:j + opening_words]
            if opening[-1] + 1 == end or is_target(identify(" ".join(words[k:opening[-1] + 1]))[0]):
                return (n - k) / n
    return 0.0


def target_letters(text: str, script: str) -> tuple[int, int]:
    """(letters in ``script``, all letters) of one text."""
    counts = script_counts(text)
    return counts.get(script, 0), sum(counts.values())


def is_empty(text: str) -> bool:
    return not text.strip()


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Corpus-level distinct-n over words: unique n-grams / all n-grams (None when there are none)."""
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else None


def ngram_entropy(text: str, n_max: int = 3) -> float | None:
    """Mean over n = 1..n_max of the Shannon entropy (bits) of the text's word n-gram distribution;
    None for an empty text (empty outputs are counted by ``empty_share`` instead)."""
    words = text.split()
    if not words:
        return None
    ents = []
    for n in range(1, n_max + 1):
        grams = ngrams(words, n)
        if not grams:
            continue
        counts = Counter(grams)
        total = len(grams)
        ents.append(-sum(c / total * math.log2(c / total) for c in counts.values()))
    return sum(ents) / len(ents)


def is_repetitive(text: str, min_words: int = 4, min_distinct2: float = 0.5) -> bool:
    """Highly repetitive: at least ``min_words`` words and fewer than ``min_distinct2`` of its word
    bigrams distinct (" है है है है" → True), or one word making up over half of a 4+-word output."""
    words = text.split()
    if len(words) < min_words:
        return False
    bigrams = ngrams(words, 2)
    if len(set(bigrams)) / len(bigrams) < min_distinct2:
        return True
    return Counter(words).most_common(1)[0][1] / len(words) > 0.5


def mean_distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Mean over outputs of each output's own word distinct-n (outputs with no n-gram are skipped):
    degenerate repetition *within* an output (" है है है") scores low, while common phrases shared
    by different outputs ("of the") do not count against it. None when no output has an n-gram."""
    vals = []
    for t in texts:
        grams = ngrams(t.split(), n)
        if grams:
            vals.append(len(set(grams)) / len(grams))
    return sum(vals) / len(vals) if vals else None


def auc(positive: list[float], negative: list[float]) -> float:
    """ROC AUC that a positive scores higher than a negative, ties counting half (the Mann–Whitney U
    over n·m): scikit-learn's ``roc_auc_score``. A NaN score is an error (scikit-learn's), not a
    silent loss."""
    if not positive or not negative:
        raise ValueError("AUC needs at least one positive and one negative score")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(positive) + [0] * len(negative), [*positive, *negative]))


def yes_no(text: str, yes_words: Sequence[str], no_words: Sequence[str]) -> str | None:
    """The first whole-word yes/no answer in ``text`` ("yes", "no" or None). Whole words only:
    "know", "nothing" or "yesterday" are not answers. Word boundaries also hold for Indic scripts,
    whose vowel signs Python's \\b does not treat as word characters: a word character is a letter, a mark
    or a digit of any script (``regex``'s Unicode ``\\w`` and ``\\p{M}``), so sentence marks such as the danda
    (``हाँ।``) or the Urdu full stop (``ہاں۔``) end a word like a full stop does."""
    import regex

    letters = r"[\w\p{M}]"
    words = {w.lower(): "yes" for w in yes_words} | {w.lower(): "no" for w in no_words}
    pattern = regex.compile(rf"(?<!{letters})(" + "|".join(sorted(map(regex.escape, words), key=len, reverse=True))
                            + rf")(?!{letters})", regex.IGNORECASE)
    m = pattern.search(text)
    return words[m.group(1).lower()] if m else None
