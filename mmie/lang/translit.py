"""Target-script → Latin transliteration (docs/method.md §4), used both to derive romanized evaluation
prompts and to train the romanized-target detector, so the detector understands exactly this output.

Only runs of the target's own script (``script``, the ``languages.target.script`` of the config) are
converted; other text is left as is (an Urdu answer of a Hindi study stays Urdu).

- Brahmic scripts indic-transliteration knows (devanagari, bengali, gurmukhi, gujarati; see
  ``INDIC``): scheme ``iast_plain`` (default) is its IAST, then the way people type these languages in
  Latin script — diacritics stripped, anusvara/candrabindu as "n", word-final inherent schwa dropped
  ("nāma" → "nam"), lowercase; ``itrans`` / ``iast`` / ``hk`` give the raw scheme output. Scheme *names*
  are passed to indic-transliteration (its scheme objects raise TypeError).
- Every other non-Latin script of ``mmie.lang.scripts`` (arabic, cyrillic, greek, han): uroman
  (Hermjakob et al. 2018), the universal romanizer, lowercased; the scheme does not apply there.
- A Latin-script target has no romanized form: an error (the romanized sets do not apply).

A romanization that converts none of a text's target-script letters is an error, never a silent no-op.
Signs indic-transliteration does not map stay as they are (Devanagari's candra vowels of English loans,
डॉक्टर → "dॉktar"): mapping them would change 9 of the demo's 282 forget/train texts and with them the
demo model, so it waits for the next regeneration of the expected demo run."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from indic_transliteration import sanscript

from mmie.lang.scripts import script_counts, script_pattern

SCHEMES = {"iast_plain": sanscript.IAST, "iast": sanscript.IAST, "itrans": sanscript.ITRANS, "hk": sanscript.HK}
# target scripts indic-transliteration converts (its scheme name per mmie script name)
INDIC = {"devanagari": sanscript.DEVANAGARI, "bengali": sanscript.BENGALI, "gurmukhi": sanscript.GURMUKHI,
         "gujarati": sanscript.GUJARATI}
# the sentence marks of the Brahmic scripts (danda, double danda) become full stops
_DANDAS = str.maketrans({"\u0964": ".", "\u0965": "."})


@lru_cache(maxsize=1)
def _uroman():
    import uroman  # 2 s to load its tables: only for scripts indic-transliteration does not cover

    return uroman.Uroman()


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
    """Transliterate every run of ``script`` in ``text`` to Latin script; other text is left as is."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown romanization scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    if script == "latin":
        raise ValueError("romanize: the target is written in Latin script, so it has no romanized form; turn the "
                         "romanized sets off (eval.sets.romanized: false) for a Latin-script target")
    pattern = script_pattern(script, run=True)   # an unknown script is a ValueError naming the known ones
    if script in INDIC:
        source, target = INDIC[script], SCHEMES[scheme]

        def convert(m) -> str:   # a regex match of one run
            out = sanscript.transliterate(m.group(0), source, target)
            return _plain_word(out) if scheme == "iast_plain" else out
    else:
        def convert(m) -> str:   # a regex match of one run
            return _uroman().romanize_string(m.group(0)).lower()

    out = pattern.sub(convert, text.translate(_DANDAS))
    before, left = script_counts(text).get(script, 0), script_counts(out).get(script, 0)
    if before and left == before:
        raise ValueError(f"romanize: no {script} letter of {text[:60]!r} was converted (scheme {scheme!r}): the "
                         f"romanization would be a no-op")
    return out


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
