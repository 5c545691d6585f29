"""Writing-system (script) proportions of a text (docs/method.md §1, §4), from the Unicode Character
Database through ``regex``'s ``\\p{Script=…}`` and ``\\p{Script_Extensions=…}`` properties.

Only letters and combining marks count; digits, punctuation, whitespace and the dandas U+0964/U+0965
(used by Hindi, Bengali and Punjabi alike) are script-neutral. A letter or mark whose own script is
Common or Inherited (Arabic harakat, the tatweel, Vedic signs) belongs to the one configured script its
script extensions name; one shared by several of them (U+0951 udatta: Devanagari, Bengali, Gurmukhi, …)
is neutral like the dandas."""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache

import regex

# mmie's script names -> the Unicode Script property value
UNICODE_SCRIPTS = {"latin": "Latin", "devanagari": "Devanagari", "bengali": "Bengali", "gurmukhi": "Gurmukhi",
                   "gujarati": "Gujarati", "arabic": "Arabic", "cyrillic": "Cyrillic", "greek": "Greek", "han": "Han"}
NEUTRAL = {0x0964, 0x0965}  # danda, double danda
SCRIPTS = tuple(UNICODE_SCRIPTS) + ("other",)
_SCRIPT = {name: regex.compile(rf"\p{{Script={value}}}") for name, value in UNICODE_SCRIPTS.items()}
_EXTENSIONS = {name: regex.compile(rf"\p{{Script_Extensions={value}}}") for name, value in UNICODE_SCRIPTS.items()}


def script_pattern(script: str, run: bool = False) -> regex.Pattern:
    """A character (``run``: one or more) of ``script`` by its script extensions: the script's own
    letters, marks and digits and the Common/Inherited ones it uses (transliteration converts such runs)."""
    if script not in UNICODE_SCRIPTS:
        raise ValueError(f"unknown script {script!r}; known: {sorted(UNICODE_SCRIPTS)}")
    return regex.compile(rf"\p{{Script_Extensions={UNICODE_SCRIPTS[script]}}}" + ("+" if run else ""))


@lru_cache(maxsize=None)
def char_script(ch: str) -> str | None:
    """Script of one character, or None when it is script-neutral (not a letter or mark, a danda, or
    a Common/Inherited mark several configured scripts share)."""
    if ord(ch) in NEUTRAL:
        return None
    cat = unicodedata.category(ch)
    if not (cat.startswith("L") or cat.startswith("M")):
        return None
    for name, pattern in _SCRIPT.items():
        if pattern.match(ch):
            return name
    owners = [name for name, pattern in _EXTENSIONS.items() if pattern.match(ch)]
    if len(owners) > 1:
        return None
    return owners[0] if owners else "other"


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
