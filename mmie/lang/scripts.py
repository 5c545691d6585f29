"""Writing-system (script) proportions of a text (docs/method.md §1, §4).

Only letters and combining marks count; digits, punctuation, whitespace and the dandas U+0964/U+0965
(used by Hindi, Bengali and Punjabi alike) are script-neutral."""

from __future__ import annotations

import unicodedata
from collections import Counter

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
