"""Writing-system (script) proportions of a text (docs/method.md §1, §4).

Only letters and combining marks count; digits, punctuation, whitespace and the dandas U+0964/U+0965
(used by Hindi, Bengali and Punjabi alike) are script-neutral."""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache

# (name, inclusive ranges). Order matters only for readability; ranges do not overlap.
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF)),
    "devanagari": ((0x0900, 0x097F), (0xA8E0, 0xA8FF)),
    "bengali": ((0x0980, 0x09FF),),
    "gurmukhi": ((0x0A00, 0x0A7F),),
    "gujarati": ((0x0A80, 0x0AFF),),
    "arabic": ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "cyrillic": ((0x0400, 0x04FF),),
    "greek": ((0x0370, 0x03FF),),
    "han": ((0x4E00, 0x9FFF),),
}
NEUTRAL = {0x0964, 0x0965}  # danda, double danda
SCRIPTS = tuple(SCRIPT_RANGES) + ("other",)


@lru_cache(maxsize=None)
def char_script(ch: str) -> str | None:
    """Script of one character, or None when it is script-neutral (not a letter or mark)."""
    cp = ord(ch)
    if cp in NEUTRAL:
        return None
    cat = unicodedata.category(ch)
    if not (cat.startswith("L") or cat.startswith("M")):
        return None
    for name, ranges in SCRIPT_RANGES.items():
        for lo, hi in ranges:
            if lo <= cp <= hi:
                return name
    return "other"


def script_counts(text: str) -> Counter:
    return Counter(s for s in map(char_script, text) if s is not None)


def script_proportions(text: str) -> dict[str, float]:
    """Share of letters per script; empty dict when the text has no letters."""
    counts = script_counts(text)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def dominant_script(text: str, min_share: float = 0.5) -> tuple[str | None, float]:
    """(script, share) of the most common script when its share ≥ ``min_share``, else (None, share)."""
    props = script_proportions(text)
    if not props:
        return None, 0.0
    script, share = max(props.items(), key=lambda kv: kv[1])
    return (script if share >= min_share else None), share


def letter_count(text: str) -> int:
    return sum(script_counts(text).values())


# ----------------------------------------------------------------------------- words (LID noise rules, ES)
_ZERO_WIDTH = {0x200C, 0x200D, 0xFEFF}  # ZWNJ, ZWJ, BOM: spelling variants of the same Indic word
_APOSTROPHES = {"'", "\u2019"}


def has_letter(word: str) -> bool:
    """Whether ``word`` holds a letter (Unicode category L). A word of combining marks only (``ों``),
    digits or punctuation is not a word."""
    return any(unicodedata.category(ch).startswith("L") for ch in word)


def lexical_tokens(text: str) -> list[str]:
    """The text's lexical tokens: maximal runs of letters and combining marks (an apostrophe between
    two letters stays inside: "don't"), NFC-normalized and casefolded, zero-width joiners dropped.
    Digits, punctuation, dandas and symbols separate tokens."""
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    cur: list[str] = []
    for i, ch in enumerate(text):
        cp = ord(ch)
        if cp in _ZERO_WIDTH:
            continue
        cat = unicodedata.category(ch)
        if cp not in NEUTRAL and (cat.startswith("L") or cat.startswith("M")):
            cur.append(ch)
        elif ch in _APOSTROPHES and cur and i + 1 < len(text) and text[i + 1].isalpha():
            cur.append("'")
        elif cur:
            out.append("".join(cur).casefold())
            cur = []
    if cur:
        out.append("".join(cur).casefold())
    return out


def word_script(word: str) -> str | None:
    """The most common script among a word's letters and marks; None for a word without a letter
    (``has_letter``)."""
    if not has_letter(word):
        return None
    counts = script_counts(word)
    return max(counts.items(), key=lambda kv: kv[1])[0] if counts else None
