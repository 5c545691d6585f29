"""Translation quality for the comprehension set (docs/method.md §5): chrF (Popović 2015) through
sacrebleu, the maintained reference implementation — character n-grams up to 6, β = 2, on a 0–100
scale, sentence level."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _metric():
    from sacrebleu.metrics import CHRF

    return CHRF()   # char_order 6, word_order 0, beta 2: chrF as published (not chrF++)


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence-level chrF of one output against one reference translation (0 for an empty output)."""
    return float(_metric().sentence_score(hypothesis, [reference]).score)
