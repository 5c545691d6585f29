"""LID ensemble and transliteration (docs/method.md §4; reliability row 6)."""
import json

import pytest

from conftest import DEMO
from mmie.errors import LIDError
from mmie.lang.lid import LID, RomanizedDetector, confusion
from mmie.lang.scripts import script_proportions
from mmie.lang.translit import romanize


@pytest.fixture(scope="module")
def detector(demo_texts):
    return RomanizedDetector.train([romanize(t) for t in demo_texts["hi"][:300]], demo_texts["en"][:300])


@pytest.fixture(scope="module")
def lid(demo_config, detector):
    return LID(demo_config["lid"], demo_config["languages"], detector)


def test_transliteration_output_is_latin():
    out = romanize("मेरा नाम राज है और मैं दिल्ली में रहता हूँ।")
    assert script_proportions(out) == {"latin": 1.0}
    assert out.startswith("mera nam raj hai aur main dilli")
    assert script_proportions(romanize("क्या हाल है", "itrans")) == {"latin": 1.0}
    with pytest.raises(ValueError, match="unknown romanization scheme"):
        romanize("क", "nonsense")


def test_romanized_detector_on_heldout_and_natural_hinglish(detector, demo_texts):
    heldout_rom = [romanize(t) for t in demo_texts["hi"][300:]]
    heldout_en = demo_texts["en"][300:]
    acc_rom = sum(detector.prob_target(t) >= 0.5 for t in heldout_rom) / len(heldout_rom)
    acc_en = sum(detector.prob_target(t) < 0.5 for t in heldout_en) / len(heldout_en)
    natural = [json.loads(x)["text"] for x in (DEMO / "forget_romanized.jsonl").read_text().splitlines()]
    acc_nat = sum(detector.prob_target(t) >= 0.5 for t in natural) / len(natural)
    assert acc_rom > 0.95 and acc_en > 0.95 and acc_nat > 0.9


def test_detector_save_load_round_trip(tmp_path, detector):
    detector.save(tmp_path / "d.json")
    again = RomanizedDetector.load(tmp_path / "d.json")
    for t in ("mera naam raj hai", "the weather is nice today"):
        assert again.prob_target(t) == pytest.approx(detector.prob_target(t))


def test_lid_on_labelled_check_set(lid):
    items = [json.loads(x) for x in (DEMO / "lid_check.jsonl").read_text(encoding="utf-8").splitlines()]
    res = confusion(lid, items)
    assert res["accuracy"] >= 0.95
    # the old detector called all Bengali and Punjabi "Hindi": never again
    assert res["matrix"]["bn"]["hi"] == 0 and res["matrix"]["pa"]["hi"] == 0
    assert min(res["per_label_accuracy"].values()) >= 0.9


def test_aggregation_rules(lid):
    assert lid.identify("123 !!! ।") == ("und", 1.0)
    assert lid.identify("আমি ভাত খাই।")[0] == "bn"
    assert lid.identify("Привет, как дела?")[0] == "und"       # script of no configured language
    assert lid.identify("mujhe chai bahut pasand hai")[0] == "hi_rom"
    assert lid.identify("I like tea very much.")[0] == "en"
    assert lid.is_target("hi_rom") and lid.is_target("hi") and not lid.is_target("ur")


def test_latin_text_no_voter_claims_is_und(demo_config, detector, monkeypatch):
    lid = LID(demo_config["lid"], demo_config["languages"], detector)
    monkeypatch.setattr(lid.detector, "prob_target", lambda t: 0.1)
    monkeypatch.setattr(lid.langid, "prob", lambda t, c: 0.05)
    monkeypatch.setattr(lid.fasttext, "prob", lambda t, c: 0.05)
    assert lid.identify("Ceci est une phrase")[0] == "und"


def test_configured_voter_missing_is_an_error(demo_config, detector, tmp_path):
    cfg = json.loads(json.dumps(demo_config["lid"]))
    cfg["voters"]["fasttext"]["model"] = str(tmp_path / "lid.176.bin")
    with pytest.raises(LIDError, match="lid.176.bin"):
        LID(cfg, demo_config["languages"], detector)
    cfg = json.loads(json.dumps(demo_config["lid"]))
    with pytest.raises(LIDError, match="romanized"):
        LID(cfg, demo_config["languages"], None)
    with pytest.raises(LIDError, match="fit_lid"):
        RomanizedDetector.load(tmp_path / "missing.json")


def test_available_voters_are_reported(demo_config, detector):
    cfg = json.loads(json.dumps(demo_config["lid"]))
    cfg["voters"]["langid"] = False
    d = LID(cfg, demo_config["languages"], detector).describe()
    assert d["voters_available"]["langid"] is False
    assert d["voters_available"]["script"] is True and d["voters_available"]["romanized"] is True
    assert str(d["voters_available"]["fasttext"]).endswith("lid.176.ftz")
