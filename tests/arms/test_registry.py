"""One declaration per arm method (mmie/arms/methods/<method>.py): the schema, the config checks and the
workflow's arm lists all derive from it."""

import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from mmie.arms import methods as registry
from mmie.arms.method import Method
from mmie.config import arm_groups, check_arm, load
from mmie.errors import ConfigError

SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
ARM = SCHEMA["$defs"]["arm"]["properties"]


def test_schema_method_list_is_the_registry():
    assert sorted(ARM["method"]["enum"]) == sorted(registry.methods())


def test_every_arm_setting_of_the_schema_belongs_to_a_method_and_back():
    declared = {k for m in registry.methods().values() for k in m.keys}
    assert declared <= set(ARM), f"settings declared by a method but missing from the schema: {declared - set(ARM)}"
    assert set(ARM) - {"method", "train"} <= declared, "schema settings that no method takes"


def test_every_method_module_declares_itself_under_its_own_name():
    for name, m in registry.methods().items():
        assert isinstance(m, Method) and m.name == name
        assert m.defaults.keys() <= set(m.keys)


def test_workflow_arm_lists_come_from_the_declarations():
    g = arm_groups(load(ROOT / "config.yaml"))
    assert g["trained"] == [a for a, s in load(ROOT / "config.yaml")["arms"].items()
                            if s["method"] in ("lora", "reft", "rmu")]
    assert set(g["sae"]) == {"sae_gate", "lora+sae_gate", "reft+sae_gate", "random_gate"}
    assert g["sweep"] == ["sae_gate"]     # a gate sitting on a trained arm has no sweep of its own
    assert "reft" in g["layer_arms"] and "lora" not in g["layer_arms"] and "dim" in g["layer_arms"]
    # the oracle is evaluated from its own model: untrained, reads no layer selection and no SAE
    assert "oracle" in g["arms"] and "oracle" not in g["trained"] + g["layer_arms"] + g["sae"] + g["sweep"]


def test_a_setting_of_another_method_names_the_key_and_the_method():
    cfg = load(ROOT / "config.yaml")
    with pytest.raises(ConfigError, match=r"arms\.d: \['gate_alpha'\] is not a setting of method 'dim'"):
        check_arm(cfg, "d", {"method": "dim", "gate_alpha": 1.0, "train": {}}, ROOT)
    with pytest.raises(ConfigError, match="unknown method 'nope'.*known methods: base"):
        check_arm(cfg, "x", {"method": "nope"}, ROOT)


def test_a_new_method_module_is_found_without_touching_any_list(tmp_path, monkeypatch):
    pkg = tmp_path / "extra"
    pkg.mkdir()
    (pkg / "toy.py").write_text(
        "from mmie.arms.method import Method\n"
        "METHOD = Method(name='toy', summary='a test method', build=lambda ctx: None, seeded=True)\n")
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(pkg)])
    registry.methods.cache_clear()
    try:
        assert "toy" in registry.methods() and registry.method("toy").seeded
        cfg = load(ROOT / "config.yaml")
        cfg["arms"]["t"] = {"method": "toy", "train": {}}
        from mmie.config import is_seeded

        assert is_seeded(cfg, "t")
    finally:
        monkeypatch.undo()
        registry.methods.cache_clear()
        sys.modules.pop("mmie.arms.methods.toy", None)
    assert "toy" not in registry.methods()


def test_method_modules_stay_light():
    """Snakemake reads the declarations when it parses the workflow: no torch, peft or pyreft."""
    import subprocess

    code = ("import sys\nfrom mmie.arms.methods import methods\nmethods()\n"
            "print([m for m in ('torch', 'peft', 'pyreft', 'sae_lens', 'transformers') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_train_rule_serves_every_trained_method():
    text = (ROOT / "rules" / "train.smk").read_text()
    assert text.count("\nrule ") + text.startswith("rule ") == 1 and "TRAINED_ARMS" in text
    assert Path(ROOT / "scripts" / "train.py").is_file()


def test_sweep_controls_are_declared_edit_methods(tmp_path, monkeypatch):
    """The sweep_gate job sweeps an arm's own edit and its method's ``sweep_controls`` (no method names
    in the job); a control that is not a declared edit method is refused when the registry loads."""
    assert registry.method("sae_gate").sweep_controls == ("random_gate",)
    with pytest.raises(ValueError, match="sweep_controls without sweep"):
        Method(name="x", summary="x", build=lambda ctx: None, sweep_controls=("random_gate",))
    pkg = tmp_path / "extra"
    pkg.mkdir()
    (pkg / "toy.py").write_text(
        "from mmie.arms.method import Method\n"
        "METHOD = Method(name='toy', summary='a test method', build=lambda ctx: None, edit=lambda *a: None,\n"
        "                sweep=True, sweep_controls=('lora',))\n")
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(pkg)])
    registry.methods.cache_clear()
    try:
        with pytest.raises(TypeError, match="sweep control 'lora' is not a declared edit method"):
            registry.methods()
    finally:
        monkeypatch.undo()
        registry.methods.cache_clear()
        sys.modules.pop("mmie.arms.methods.toy", None)
