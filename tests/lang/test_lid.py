"""LID ensemble and transliteration (docs/method.md §4; reliability row 6)."""
import json

import pytest

from conftest import DEMO, ROOT
from mmie.config import deep_update
from mmie.errors import DataError, LIDError
from mmie.lang.lid import LID, NOISE, RomanizedDetector, confusion, fit_detector, precision_recall
from mmie.lang.scripts import script_proportions
from mmie.lang.translit import romanize, typed_variants
from mmie.stats.text import extraction_strength

# written for these tests (not from the demo corpus): everyday sentences in languages that share a
# configured script without being configured
MARATHI = ["माझे नाव राहुल आहे आणि मी पुण्यात राहतो.", "आज सकाळी मी बाजारात भाजी आणायला गेलो होतो.",
           "तुम्ही जेवण केले का? आम्ही आता निघत आहोत.", "माझ्या आईने आज खूप छान पुरणपोळी बनवली.",
           "पावसाळ्यात आमच्या गावातील नदीला पूर येतो."]
NEPALI = ["मेरो नाम राहुल हो र म काठमाडौंमा बस्छु।", "आज बिहान म बजार गएँ र तरकारी किनें।",
          "तपाईंले खाना खानुभयो? हामी अहिले जाँदैछौं।", "मेरी आमाले आज धेरै मीठो खाना पकाउनुभयो।",
          "वर्षायाममा हाम्रो गाउँको खोलामा बाढी आउँछ।"]
HINDI = ["मेरा नाम राहुल है और मैं दिल्ली में रहता हूँ।", "आज सुबह मैं बाज़ार से सब्ज़ियाँ लेकर आया।",
         "क्या तुमने खाना खा लिया? हम अभी निकल रहे हैं।", "मेरी माँ ने आज बहुत स्वादिष्ट खाना बनाया।",
         "बरसात में हमारे गाँव की नदी में बाढ़ आ जाती है।"]
PERSIAN = ["من امروز صبح به بازار رفتم و میوه خریدم.", "هوا امروز خیلی سرد است و باران می‌بارد."]
ASSAMESE = ["মই আজি ৰাতিপুৱা বজাৰলৈ গৈছিলোঁ আৰু শাক-পাচলি কিনিছিলোঁ।", "আমাৰ গাঁৱৰ নদীখনত বাৰিষা বানপানী আহে।"]


def natural_romanized():
    return [json.loads(x)["text"] for x in (DEMO / "forget_romanized.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def detector(demo_config, demo_texts):
    """Fitted as fit_lid does: train texts of every language and natural romanized train texts."""
    train = {"hi": demo_texts["hi"][:300], "en": demo_texts["en"][:300],
             **{c: demo_texts[c][:100] for c in ("ur", "pa", "bn")}}
    return fit_detector(demo_config["lid"], demo_config["languages"], train, natural_romanized()[:100])


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
    # the informal spellings of the romanized lexicon
    assert {"shaadi", "shadi"} <= typed_variants("शादी") and "chhota" in typed_variants("छोटा")
    assert {"wali", "vaali"} <= typed_variants("वाली") and "doodh" in typed_variants("दूध")


def test_romanized_detector_on_heldout_and_natural_hinglish(detector, demo_texts):
    heldout_rom = [romanize(t) for t in demo_texts["hi"][300:]]
    heldout_en = demo_texts["en"][300:]
    acc_rom = sum(detector.prob_target(t) >= 0.5 for t in heldout_rom) / len(heldout_rom)
    acc_en = sum(detector.prob_target(t) < 0.5 for t in heldout_en) / len(heldout_en)
    natural = natural_romanized()[100:]
    acc_nat = sum(detector.prob_target(t) >= 0.5 for t in natural) / len(natural)
    assert acc_rom > 0.95 and acc_en > 0.95 and acc_nat > 0.9
    assert set(detector.probs("mera naam raj hai")) == {"target_rom", "retain", "noise"}


def test_detector_save_load_round_trip_and_strict_kind(tmp_path, detector):
    detector.save(tmp_path / "d.json")
    again = RomanizedDetector.load(tmp_path / "d.json")
    for t in ("mera naam raj hai", "the weather is nice today", "xqzv lkptr wmbbo"):
        assert again.probs(t) == pytest.approx(detector.probs(t))
    assert again.lexicons == detector.lexicons and again.lexicon_sources == detector.lexicon_sources
    old = json.loads((tmp_path / "d.json").read_text())
    old["kind"] = "char_ngram_nb"  # the two-class detector of earlier versions
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(LIDError, match="rerun the fit_lid rule"):
        RomanizedDetector.load(tmp_path / "old.json")


def test_lexicons_come_from_train_texts_and_the_general_word_list(detector):
    src = detector.lexicon_sources
    assert set(src) == {"hi", "en", "ur", "pa", "bn", "hi_rom"}
    assert src["pa"]["general"] is None  # wordfreq has no Punjabi list (it would answer with English's)
    assert all(src[c]["general"]["source"] == "wordfreq" for c in ("hi", "en", "ur", "bn", "hi_rom"))
    assert "afternoon" in detector.lexicons["en"] and "shaadi" in detector.lexicons["hi_rom"]
    assert "ਪਰ" in detector.lexicons["pa"] and "the" not in detector.lexicons["pa"]


def test_lid_on_labelled_check_set(lid):
    items = [json.loads(x) for x in (DEMO / "lid_check.jsonl").read_text(encoding="utf-8").splitlines()]
    res = confusion(lid, items)
    assert res["accuracy"] >= 0.95
    # the old detector called all Bengali and Punjabi "Hindi": never again
    assert res["matrix"]["bn"]["hi"] == 0 and res["matrix"]["pa"]["hi"] == 0
    assert min(res["per_label_accuracy"].values()) >= 0.9
    assert sum(row[NOISE] for row in res["matrix"].values()) == 0  # clean sentences are never noise
    assert res["precision_recall"]["hi"]["recall"] == res["per_label_accuracy"]["hi"]


def test_clean_held_out_sentences_of_every_language_keep_their_label(lid, demo_texts):
    held = {"hi": demo_texts["hi"][300:], "en": demo_texts["en"][300:],
            "hi_rom": [romanize(t) for t in demo_texts["hi"][300:360]],
            **{c: demo_texts[c][100:] for c in ("ur", "pa", "bn")}}
    for lang, texts in held.items():
        labels = [lid.identify(t)[0] for t in texts]
        assert labels.count(lang) / len(labels) >= 0.95, (lang, [x for x in labels if x != lang])
        assert NOISE not in labels, lang
    natural = [lid.identify(t)[0] for t in natural_romanized()[100:]]
    assert natural.count("hi_rom") >= 0.95 * len(natural) and NOISE not in natural


def test_aggregation_rules(lid):
    assert lid.identify("123 !!! ।") == ("und", 1.0)
    assert lid.identify("আমি ভাত খাই।")[0] == "bn"
    assert lid.identify("Привет, как дела?")[0] == "und"       # script of no configured language
    assert lid.identify("mujhe chai bahut pasand hai")[0] == "hi_rom"
    assert lid.identify("I like tea very much.")[0] == "en"
    assert lid.is_target("hi_rom") and lid.is_target("hi") and not lid.is_target("ur")
    assert NOISE in lid.labels and "und" in lid.labels and not lid.is_target(NOISE)
    # a recognisably English degraded output stays English
    assert lid.identify("the country, and sored every S night.")[0] == "en"
    # English quoting a Hindi word: the Latin voters see the Latin letters
    assert lid.identify("Explain what 'धन्यवाद' means and use it in a sentence.")[0] == "en"


@pytest.mark.parametrize("text,rule", [
    ("ਠਠਠ", "character run"),
    ("ਠਠਠਠਠਠਠਠ ਠਠਠਠ", "character run"),
    ("ेेेेेेेेेेेे", "combining marks only"),
    ("akesakesakesakesakesakesakes", "character run"),
    ("सक सक सक", "token run"),
    ("hath hath hath", "token run"),
    ("is is is is", "token run"),
    ("आम आम आम आम आम आम", "token run"),
    ("ों", "combining marks only"),
    ("walk to इसलिए अपने अ fr। میں कारण in the payro", "mixed scripts: too many"),
    ("use but even to इसलिए এক or ake ਤੁਸੀਂ", "mixed scripts: too many"),
    ("ਕੋਈ गया খুব", "mixed scripts: none dominant"),
    ("road ਤੁਸੀਂ sidpਹ hallমি", "mixed scripts within words"),
    ("is so stro minmh olocks sikple phadf.", "word salad: few valid words"),
    ("kal ko ri ta mo na ke", "fragment salad"),
    ("कपिरु तरोमा झुबे ठिंगो लापे धुरकी", "word salad: few valid words"),
])
def test_noise(lid, text, rule):
    d = lid.explain(text)
    assert (d.label, d.rule) == (NOISE, rule), (d.label, d.rule, d.evidence)


def test_target_script_gibberish_and_random_latin_are_noise(lid):
    gib = [json.loads(x)["text"] for x in (DEMO / "gibberish_hi.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [lid.identify(t)[0] for t in gib].count(NOISE) >= 0.95 * len(gib)
    for junk in ("xqzv lkptr wmbbo fjeq pzorv", "tmoh aseld ronve ishto laper ghuna",
                 "kal ko ri ta mo na ke"):
        assert not lid.is_target(lid.identify(junk)[0]), junk


def test_syllable_salad_is_not_romanized_target_and_the_detector_has_a_noise_class(lid, detector):
    # before: the two-class detector called this hi_rom with p = 1.00
    assert lid.identify("kal ko ri ta mo na ke")[0] == NOISE
    assert detector.probs("xqzv lkptr wmbbo fjeq pzorv")["noise"] > 0.9
    assert lid.explain("xqzv lkptr wmbbo fjeq pzorv").label == NOISE


def test_script_shared_by_another_language_is_not_the_target(lid):
    for t in HINDI:
        assert lid.identify(t)[0] == "hi", t
    for t in MARATHI:
        assert lid.explain(t).rule == "fasttext: another language" and lid.identify(t)[0] == "und", t
    nepali = [lid.identify(t)[0] for t in NEPALI]
    # fastText is confident on one (ne 0.85: und); the others are mostly non-Hindi words (noise), but
    # the first (fastText ne 0.56 / hi 0.39, half its words Hindi words) may pass as Hindi
    assert nepali[4] == "und" and all(lab == NOISE for lab in nepali[1:4]) and nepali[0] in ("hi", NOISE), nepali
    for t in PERSIAN:   # the same logic in the Arabic script
        assert lid.identify(t)[0] == "und", t
    for t in ASSAMESE:  # and in the Bengali script
        assert lid.identify(t)[0] == "und", t


def test_other_latin_languages_are_und_but_romanized_target_is_not(lid):
    assert lid.identify("Ceci est une phrase en français.")[0] == "und"
    assert lid.identify("Esta mañana fui al mercado a comprar verduras.")[0] == "und"
    # fastText calls this transliterated Hindi French (p 0.94): the romanized detector claims it first
    assert lid.identify("pletafaॉrm nanbar car par khari gari kuch hi minaton men ravana hone vali hai.")[0] == "hi_rom"


def test_code_mixed_text_is_a_language_not_noise(lid):
    assert lid.identify("Yaar, ek joke sunao jo office ke colleagues ko bhi funny lage.")[0] == "hi_rom"
    assert lid.identify("मुझे meeting के लिए late हो गया।")[0] == "hi"
    assert lid.identify("Yaar, can you tell me kal ka weather kaisa rahega?")[0] != NOISE


def test_noise_can_be_switched_off(demo_config, detector):
    cfg = deep_update(demo_config["lid"], {"noise": {"enabled": False}})
    off = LID(cfg, demo_config["languages"], detector)
    assert off.identify("सक सक सक")[0] == "hi" and off.identify("ਕੋਈ गया খুব")[0] == "und"
    assert off.identify("कपिरु तरोमा झुबे ठिंगो लापे धुरकी")[0] == "hi"


def test_noise_needs_the_lexicons(demo_config, demo_texts):
    bare = RomanizedDetector.train([romanize(t) for t in demo_texts["hi"][:50]], demo_texts["en"][:50])
    with pytest.raises(LIDError, match="lexicon"):
        LID(demo_config["lid"], demo_config["languages"], bare)


def test_extraction_strength_with_the_lid(lid):
    """ES starts at a real target span: the lone mark before English word salad is none (it was 1.0)."""
    es = lambda t: extraction_strength(t, lid.identify, lid.is_target)  # noqa: E731
    assert es("ों for is soomes and stay but the set do is aron.") == 0.0
    assert es("सक सक सक सक") == 0.0 and es("ਠਠਠ") == 0.0
    assert es("मेरी माँ ने आज बहुत स्वादिष्ट खाना बनाया।") == 1.0
    assert es("I think that मेरी माँ ने आज बहुत स्वादिष्ट खाना बनाया।") == pytest.approx(8 / 11)
    assert es("mujhe chai bahut pasand hai") == 1.0


def test_latin_text_no_voter_claims_is_und(demo_config, detector, monkeypatch):
    lid = LID(demo_config["lid"], demo_config["languages"], detector)
    monkeypatch.setattr(lid.detector, "probs", lambda t: {"target_rom": 0.1, "retain": 0.5, "noise": 0.4})
    monkeypatch.setattr(lid.langid, "prob", lambda t, c: 0.05)
    monkeypatch.setattr(lid.fasttext, "prob", lambda t, c: 0.05)
    monkeypatch.setattr(lid.fasttext, "ranked", lambda t, k=5: [("xx", 0.3)])
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
    assert d["voters_available"]["lexicon"] is True and NOISE in d["labels"]


def test_precision_recall_by_hand():
    # gold rows, predicted columns
    matrix = {"hi": {"hi": 8, "en": 1, "noise": 1, "und": 0},
              "en": {"hi": 0, "en": 9, "noise": 0, "und": 1},
              "noise": {"hi": 2, "en": 0, "noise": 3, "und": 0}}
    pr = precision_recall(matrix)
    assert pr["hi"]["precision"] == pytest.approx(8 / 10) and pr["hi"]["recall"] == pytest.approx(8 / 10)
    assert pr["en"]["precision"] == pytest.approx(9 / 10) and pr["en"]["recall"] == pytest.approx(9 / 10)
    assert pr["noise"]["precision"] == pytest.approx(3 / 4) and pr["noise"]["recall"] == pytest.approx(3 / 5)
    assert pr["noise"]["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert pr["und"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0, "predicted": 1}
    assert pr["hi"]["support"] == 10 and pr["noise"]["predicted"] == 4


def test_gates_may_name_lang_share_noise(demo_config):
    from mmie.config import check_gates

    cfg = deep_update(demo_config, {})
    cfg["gates"] = [{"name": "forget_noise", "metric": "lang_share_noise", "set": "forget", "direction": "<=",
                     "relative": "delta", "threshold": 0.5}]
    check_gates(cfg)


def test_fit_lid_reports_precision_recall_on_the_check_set_and_the_audit_set(tmp_path, demo_config):
    from mmie.config import raw_data_files
    from mmie.data.corpus import SPLITS, split_paths, split_roles
    from mmie.jobs import data as data_job

    audit = tmp_path / "audit.jsonl"
    rows = [{"text": "सक सक सक", "label": "noise", "arm": "x"}, {"text": "I like tea very much.", "label": "en"},
            {"text": "is so stro minmh olocks sikple phadf.", "label": "noise"},
            {"text": "मेरी माँ ने आज खाना बनाया।", "label": "hi"}, {"text": "Привет, как дела?", "label": "und"}]
    audit.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = deep_update(demo_config, {"data": {"lid_audit": str(audit)}})
    for k in ("forget", "retain", "forget_romanized", "mixed", "adversarial", "lid_check", "yes_no", "gibberish"):
        cfg["data"][k] = str(ROOT / cfg["data"][k])
    cfg["data"]["neighbours"] = {k: str(ROOT / v) for k, v in cfg["data"]["neighbours"].items()}
    assert raw_data_files(cfg)["lid_audit"] == str(audit)
    data = tmp_path / "data"
    data_job.prepare_data(cfg, str(data / "prepare_report.json"))
    splits = split_paths(data, split_roles(cfg["languages"]["neighbours"]), SPLITS)
    det, rep = tmp_path / "lid" / "det.json", tmp_path / "lid" / "report.json"
    data_job.fit_lid(cfg, splits, str(data / "lid_check.jsonl"), str(data / "prepare_report.json"), str(det),
                     str(rep), lid_audit=str(audit))
    report = json.loads(rep.read_text())
    assert report["lid_check"]["accuracy"] == 1.0 and report["lid_check"]["precision_recall"]["pa"]["precision"] == 1.0
    assert report["lid_audit"]["n"] == 5 and report["lid_audit"]["accuracy"] == 1.0
    assert report["lid_audit"]["precision_recall"]["noise"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                                                "support": 2, "predicted": 2}
    assert str(audit) in json.dumps(report["provenance"])
    assert {"forget/train", "neighbours/pa/train", "romanized/train"} <= set(report["provenance"]["texts_used"]["groups"])
    # a label the LID does not know is an error naming the line
    audit.write_text(audit.read_text() + json.dumps({"text": "x", "label": "hindi"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"audit.jsonl:6"):
        data_job.fit_lid(cfg, splits, str(data / "lid_check.jsonl"), str(data / "prepare_report.json"), str(det),
                         str(rep), lid_audit=str(audit))


def test_the_cached_langid_model_is_langids_own_and_a_bad_cache_is_replaced(tmp_path, caplog):
    """Every LID load decodes langid's model (base64 + bz2 + pickle, ~2 s a process; a score or attack
    job pays it each time); mmie keeps the decoded arrays in a cache file. What loads from it is
    langid's identifier exactly: the same arrays, types and rankings; a corrupt cache is logged and
    decoded again."""
    import numpy as np
    from langid.langid import LanguageIdentifier, model

    from mmie.lang.lid import load_langid

    ref = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    first = load_langid(tmp_path)                    # decodes and writes the cache
    (cached,) = tmp_path.glob("langid-*.npz")
    again = load_langid(tmp_path)                    # reads it
    texts = ["यह एक परीक्षण है", "The weather is lovely today.", "mera naam Ravi hai", "یہ اردو میں ہے", "ਪੰਜਾਬੀ", "12 !!"]
    for ident in (first, again):
        assert np.array_equal(ident.nb_ptc, ref.nb_ptc) and ident.nb_ptc.dtype == ref.nb_ptc.dtype
        assert np.array_equal(ident.nb_pc, ref.nb_pc) and ident.nb_numfeats == ref.nb_numfeats
        assert list(ident.nb_classes) == list(ref.nb_classes)
        assert ident.tk_nextmove == ref.tk_nextmove and ident.tk_nextmove.typecode == ref.tk_nextmove.typecode
        assert ident.tk_output == ref.tk_output
        assert [ident.rank(t) for t in texts] == [ref.rank(t) for t in texts]
    cached.write_bytes(b"not an npz")
    with caplog.at_level("WARNING", logger="mmie.lang.lid"):
        fixed = load_langid(tmp_path)
    assert "unreadable" in caplog.text and [fixed.rank(t) for t in texts] == [ref.rank(t) for t in texts]
    assert np.load(cached, allow_pickle=False)["nb_pc"].shape == ref.nb_pc.shape      # rewritten


def test_without_a_cache_folder_langid_is_decoded_as_langid_does(monkeypatch, tmp_path):
    from langid.langid import LanguageIdentifier, model

    import mmie.lang.lid as lid_module

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(lid_module, "langid_cache_dir", no_home)
    ident = lid_module.load_langid()
    ref = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    assert ident.rank("यह एक परीक्षण है") == ref.rank("यह एक परीक्षण है")
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    ident = lid_module.load_langid(blocked / "mmie")               # cannot be created: decoded, not cached
    assert ident.rank("The weather is lovely.") == ref.rank("The weather is lovely.")


def test_langid_on_non_zero_features_is_langids_product_bit_for_bit():
    """mmie's langid identifier multiplies only a text's non-zero features with langid's table (0.56 ms
    -> 4 µs a text): the same float64 scores as langid's own product, bit for bit, and the same
    probability of a language as ``rank`` gives, on the demo corpus, the LID audit set and long
    concatenations of them."""
    import json
    from pathlib import Path

    import numpy as np
    from langid.langid import LanguageIdentifier, model

    from mmie.lang.lid import load_langid

    ref = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    ident = load_langid()
    root = Path(__file__).resolve().parents[2]
    texts = [json.loads(line)["text"] for line in (root / "tests/fixtures/lid_audit.jsonl").read_text().splitlines()]
    for f in sorted((root / "data/demo").rglob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row[k] for k in ("text", "prompt") if isinstance(row.get(k), str)]
    texts += [" ".join(texts[i:i + 25]) for i in range(0, len(texts), 25)] + ["", "12 !!"]
    assert len(texts) > 1000
    for t in texts:
        fv = ref.instance2fv(t)
        mine, theirs = ident.nb_classprobs(fv), ref.nb_classprobs(fv)
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), t
    for t in texts[::10]:
        ranked = dict(ref.rank(t))
        assert ident.prob(t, "en") == ranked["en"] and ident.prob(t, "hi") == ranked["hi"]
    assert ident.prob("The weather is lovely.", "xx") == 0.0


def test_the_detector_reuses_its_log_terms_and_gives_the_same_probabilities():
    """RomanizedDetector.probs computes each class's smoothed log P(gram | class) once per detector
    instead of once per text: the same probabilities, bit for bit, as the per-text formula."""
    import math
    from collections import Counter

    from mmie.lang.lid import RomanizedDetector, char_ngrams

    det = RomanizedDetector.train(["mera naam ravi hai", "aap kaise ho", "main ghar ja raha hoon"],
                                  ["my name is ravi", "how are you", "i am going home"])

    def per_text(text):
        grams = Counter(char_ngrams(text, det.n_max))
        logp = {}
        for c in det.classes:
            denom = math.log(det.totals[c] + det.alpha * det.vocab_size)
            lp = math.log(det.priors[c])
            for g, k in grams.items():
                lp += k * (math.log(det.counts[c].get(g, 0) + det.alpha) - denom)
            logp[c] = lp
        top = max(logp.values())
        exp = {c: math.exp(v - top) for c, v in logp.items()}
        z = sum(exp.values())
        return {c: v / z for c, v in exp.items()}

    for text in ["mera ghar", "my home", "qzx vvv", "", "aap how are main", "ravi ravi ravi"]:
        assert det.probs(text) == per_text(text), text
