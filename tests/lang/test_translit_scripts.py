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
