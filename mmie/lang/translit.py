"""Target script → Latin transliteration (docs/method.md §4), used both to derive romanized evaluation prompts
and to train the romanized-target detector, so the detector understands exactly this output.

The target language's script decides what is transliterated (``romanize(..., script=...)``): Devanagari
(the default), Gurmukhi, Bengali and Gujarati through indic-transliteration in the scheme below; a
script it has no scheme for (Arabic for Urdu, Cyrillic, Greek, Han) through uroman (lowercase, the
scheme does not apply; Urdu comes out without short vowels, "mjhye tchaye", as informal romanized
Urdu often is). Only runs of that script change; other text is left as is.

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
# script -> (indic-transliteration scheme name, runs of the script); danda and double danda are read as "."
INDIC = {"devanagari": (sanscript.DEVANAGARI, _DEVANAGARI_RUN),
         "gurmukhi": (sanscript.GURMUKHI, re.compile(r"[\u0A00-\u0A7F]+")),
         "bengali": (sanscript.BENGALI, re.compile(r"[\u0980-\u09FF]+")),
         "gujarati": (sanscript.GUJARATI, re.compile(r"[\u0A80-\u0AFF]+"))}
UROMAN = {"arabic": (r"[\u0600-\u06FF\u0750-\u077F\uFB50-\uFDFF\uFE70-\uFEFF]+", "urd"),
          "cyrillic": (r"[\u0400-\u04FF]+", None), "greek": (r"[\u0370-\u03FF]+", None),
          "han": (r"[\u4E00-\u9FFF\u3400-\u4DBF]+", None)}
_uroman = None


def romanizable(script: str) -> bool:
    """Whether ``romanize`` can transliterate text of ``script`` into Latin letters."""
    return script in INDIC or script in UROMAN


def _uroman_run(text: str, lcode: str | None) -> str:
    global _uroman
    if _uroman is None:
        import uroman

        _uroman = uroman.Uroman()
    return _uroman.romanize_string(text, lcode=lcode).lower()


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


def romanize(text: str, scheme: str = "iast_plain", script: str = "devanagari") -> str:
    """Transliterate every run of ``script`` (the target language's) in ``text`` to Latin script; other
    text is left as is. A script ``romanizable`` does not know is a ValueError."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown romanization scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    if script == "latin":   # already Latin: nothing to transliterate
        return text
    if script in UROMAN:
        pattern, lcode = UROMAN[script]
        return re.sub(pattern, lambda m: _uroman_run(m.group(0), lcode), text)
    if script not in INDIC:
        raise ValueError(f"no transliteration from {script!r} to Latin script; give the romanized target texts "
                         f"(data.forget_romanized)")
    source, runs = INDIC[script]
    target = SCHEMES[scheme]

    def convert(m: re.Match) -> str:
        out = sanscript.transliterate(m.group(0), source, target)
        if scheme == "iast_plain":
            out = _plain_word(out)
        return out

    text = text.replace("\u0964", ".").replace("\u0965", ".")
    return runs.sub(convert, text)


_TYPED = (("ch", "\x00"), ("c", "ch"), ("\x00", "chh"), ("ś", "sh"), ("ṣ", "sh"), ("ṛ", "ri"), ("ṃ", "n"), ("ṁ", "n"),
          ("~", "n"))
_LONG = {"ā": ("aa", "a"), "ī": ("ee", "i"), "ū": ("oo", "u")}
_UNITS = re.compile(r"ai|au|[kgcjṭḍtdpb]h|r\u0324h?|.", re.DOTALL)
_VOWELS = {"a", "ā", "i", "ī", "u", "ū", "e", "o", "ai", "au", "ṛ"}


def _syncope(iast: str) -> str:
    """Hindi medial schwa deletion on an IAST word, right to left: a short "a" between a
    vowel-consonant and a consonant-vowel is not pronounced ("agale" → "agle", "samajhanā" →
    "samajhnā", "itavār" → "itvār")."""
    units = _UNITS.findall(iast.replace("\u035f", ""))

    def cons(u: str) -> bool:
        return (u.isalpha() and u not in _VOWELS) or u.startswith("r\u0324")

    for i in range(len(units) - 3, 1, -1):
        if (units[i] == "a" and cons(units[i - 1]) and units[i - 2] in _VOWELS and cons(units[i + 1])
                and units[i + 2] in _VOWELS):
            del units[i]
    return "".join(units)


def typed_variants(word: str) -> set[str]:
    """Informal spellings of one Devanagari word beside ``romanize``'s: श/ष as "sh", च as "ch" and छ as
    "chh", ड़/ढ़ as "r"/"rh" and as "d"/"dh", व as "v" and as "w", long vowels single or doubled inside
    the word (single at its end: "शादी" → "shadi", "shaadi"), with and without the medial schwa
    ("अगले" → "agale", "agle"; "इतवार" → "itwaar") — the romanized target's lexicon (mmie.lang.lid)
    holds them all."""
    base = _plain_schwa(sanscript.transliterate(word, sanscript.DEVANAGARI, sanscript.IAST))
    out = set()
    for flap in ("r", "d"):
        for syncopated in (False, True):
            iast = _syncope(base) if syncopated else base
            iast = iast.replace("r\u0324", flap)
            for a, b in _TYPED:
                iast = iast.replace(a, b)
            doubled = []
            for i, ch in enumerate(iast):
                if ch in _LONG:
                    final = i + 1 == len(iast) or not iast[i + 1].isalpha()
                    doubled.append(_LONG[ch][1 if final else 0])
                else:
                    doubled.append(ch)
            for spelling in ("".join(doubled), iast):
                typed = "".join(c for c in unicodedata.normalize("NFD", spelling)
                                if unicodedata.category(c) != "Mn").lower()
                out |= {typed, typed.replace("v", "w")}
    return out


def _plain_schwa(word: str) -> str:
    if len(word) > 2 and word.endswith("a") and not word.endswith("ā") and any(c in "aāiīuūeoṛ" for c in word[:-1]):
        return word[:-1]
    return word
