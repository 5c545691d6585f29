"""The hand-written data files that validate mmie against humans: the LID audit set
(tests/fixtures/lid_audit.jsonl, lid_audit.md) and the Hindi->English reference translations
(data/demo/translations.jsonl). These tests check form only; the labels and translations are by hand."""
import difflib
import json
import unicodedata
from collections import Counter
from pathlib import Path

from conftest import DEMO

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LABELS = {"hi", "hi_rom", "en", "ur", "pa", "bn", "noise", "und"}
DEMO_ARMS = {"base", "prompt", "lora", "reft", "rmu", "sae_gate", "lora+sae_gate", "reft+sae_gate",
             "random_gate", "dim", "script_scrub"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _words(text: str) -> set[str]:
    return set("".join(c if c.isalnum() or unicodedata.category(c).startswith("M") else " " for c in text).split())


def test_lid_audit_set_is_well_formed_and_covers_every_arm():
    rows = _rows(FIXTURES / "lid_audit.jsonl")
    assert len(rows) >= 220
    for r in rows:
        assert set(r) <= {"text", "label", "source", "arm", "set", "seed", "id", "note"}, r
        assert isinstance(r["text"], str) and r["label"] in LABELS and r["seed"] == 0, r
        assert r["source"] in {"demo", "random-init", "gemma3-270m"}, r
    assert {r["arm"] for r in rows if r["source"] == "demo"} == DEMO_ARMS
    assert len({(r["source"], r["arm"], r["set"], r["id"]) for r in rows}) == len(rows)
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == LABELS
    doc = (FIXTURES / "lid_audit.md").read_text(encoding="utf-8")
    for label, n in counts.items():
        assert f"| `{label}` | {n} |" in doc, f"lid_audit.md does not give the count of {label} ({n})"


def test_translations_are_new_devanagari_sentences_with_english_references():
    rows = _rows(DEMO / "translations.jsonl")
    assert len(rows) == 48 and all(set(r) == {"source", "reference"} for r in rows)
    forget = [r["text"] for r in _rows(DEMO / "forget_hi.jsonl")]
    assert len({r["source"] for r in rows}) == 48
    for r in rows:
        src, ref = r["source"], r["reference"]
        assert 7 <= len(src.split()) <= 16, src
        assert not any("a" <= c.lower() <= "z" for c in src) and any("\u0900" <= c <= "\u097f" for c in src), src
        assert ref.isascii() and len(ref.split()) >= 5, ref
        # not a copy or a near-duplicate of a forget line (character similarity or shared words)
        assert src not in forget
        ws = _words(src)
        for line in forget:
            assert difflib.SequenceMatcher(None, src, line).ratio() < 0.7, (src, line)
            assert len(ws & _words(line)) / len(ws | _words(line)) < 0.5, (src, line)
