"""The romanized target is derived in the target language's own script (issue 24: every target language
works with the defaults): Gurmukhi, Bengali and Urdu targets get Latin text, not a copy of forget."""
import copy

import pytest

from mmie import config as mcfg
from mmie.errors import ConfigError
from mmie.lang.translit import romanize


@pytest.mark.parametrize("script,text,want", [
    ("gurmukhi", "ਮੈਨੂੰ ਚਾਹ ਬਹੁਤ ਪਸੰਦ ਹੈ।", "mainun cah bahut pasand hai."),
    ("bengali", "আমি চা খুব ভালোবাসি।", "ami ca khuv bhalovasi."),
    ("arabic", "مجھے چائے بہت پسند ہے", "mjhye tchayeye bht psnd hye"),
    ("devanagari", "मुझे चाय बहुत पसंद है।", "mujhe cay bahut pasand hai."),
])
def test_each_target_script_is_romanized(script, text, want):
    assert romanize(text, "iast_plain", script) == want


def test_only_the_target_script_changes():
    mixed = "ok मुझे ਮੈਨੂੰ"
    assert romanize(mixed, "iast_plain", "gurmukhi") == "ok मुझे mainun"
    assert romanize(mixed) == "ok mujhe ਮੈਨੂੰ"        # Devanagari by default, as before


def test_a_latin_script_target_is_refused_at_config_check(demo_config):
    config = copy.deepcopy(demo_config)
    config["languages"]["target"] = {"code": "xx", "script": "latin"}
    config["data"]["forget_romanized"] = None
    with pytest.raises(ConfigError, match="languages.target.script is 'latin'.*non-Latin script"):
        mcfg.check(config)


def test_char_script_agrees_with_the_unicode_character_names():
    """An independent reading of the Unicode Character Database: every letter and mark of the BMP whose
    name starts with a configured script's name (``DEVANAGARI …``, ``CJK UNIFIED IDEOGRAPH…``) gets that
    script, except the four Devanagari signs Unicode gives the Inherited script (shared Vedic marks)."""
    import unicodedata

    from mmie.lang.scripts import char_script

    prefixes = {"LATIN ": "latin", "DEVANAGARI ": "devanagari", "BENGALI ": "bengali", "GURMUKHI ": "gurmukhi",
                "GUJARATI ": "gujarati", "ARABIC ": "arabic", "CYRILLIC ": "cyrillic", "GREEK ": "greek",
                "CJK UNIFIED IDEOGRAPH": "han"}
    checked, wrong = 0, {}
    for cp in range(0x10000):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(ch)[0] not in "LM":
            continue
        want = next((s for p, s in prefixes.items() if unicodedata.name(ch, "").startswith(p)), None)
        if want is not None:
            checked += 1
            if char_script(ch) != want:
                wrong[cp] = char_script(ch)
    assert checked > 30000
    assert wrong == {0x0951: None, 0x0952: None, 0x0953: "other", 0x0954: "other"}


def test_common_and_inherited_marks_follow_their_script_extensions():
    from mmie.lang.scripts import char_script, script_proportions

    assert char_script("\u064e") == "arabic" and char_script("\u0640") == "arabic"   # fatha, tatweel
    assert char_script("\u0964") is None and char_script("\u0951") is None          # danda; udatta (shared)
    assert char_script("\u3400") == "han" and char_script("\u0250") == "latin"       # CJK ext. A, IPA
    assert char_script("\u03e2") == "other"                                          # Coptic, not Greek
    assert script_proportions("کَتاب") == {"arabic": 1.0}
