"""Devanagari → Latin transliteration (docs/method.md §4), used both to derive romanized evaluation prompts
and to train the romanized-target detector, so the detector understands exactly this output.

Scheme ``iast_plain`` (default): indic-transliteration's IAST, then the way people type Hindi in
Latin script — diacritics stripped, anusvara/candrabindu as "n", word-final inherent schwa dropped
("nāma" → "nam"), lowercase. ``itrans`` / ``iast`` / ``hk`` give the raw scheme output. Scheme
*names* are passed to indic-transliteration (its scheme objects raise TypeError)."""

from __future__ import annotations

import re
import unicodedata

from indic_transliteration import sanscript

SCHEMES = {"iast_plain": sanscript.IAST, "iast": sanscript.IAST, "itrans": sanscript.ITRANS, "hk": sanscript.HK}
_DEVANAGARI_RUN = re.compile(r"[\u0900-\u097F\uA8E0-\uA8FF]+")


def _plain_word(word: str) -> str:
    # IAST word → informal spelling. Word-final inherent 'a' (not 'ā') is dropped when the word keeps
    # a vowel: "nāma"→"nam", "aura"→"aur", but "na"→"na".
    if len(word) > 2 and word.endswith("a") and not word.endswith("ā"):
        stem = word[:-1]
        if any(c in "aāiīuūeoṛ" for c in stem):
            word = stem
    word = word.replace("ṃ", "n").replace("ṁ", "n").replace("~", "n")
    word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
    return word.lower()


def romanize(text: str, scheme: str = "iast_plain") -> str:
    """Transliterate every Devanagari run in ``text`` to Latin script; other text is left as is."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown romanization scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    target = SCHEMES[scheme]

    def convert(m: re.Match) -> str:
        out = sanscript.transliterate(m.group(0), sanscript.DEVANAGARI, target)
        if scheme == "iast_plain":
            out = _plain_word(out)
        return out

    text = text.replace("\u0964", ".").replace("\u0965", ".")
    return _DEVANAGARI_RUN.sub(convert, text)
