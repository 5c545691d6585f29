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


def test_the_schema_file_names_no_method_and_no_method_setting():
    """Arm settings are declared by their methods; the schema file has only ``method`` and ``train``."""
    arm = SCHEMA["$defs"]["arm"]
    assert set(arm["properties"]) == {"method", "train"} and "enum" not in arm["properties"]["method"]

    def property_names(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties":
                    yield from value
                yield from property_names(value)
        elif isinstance(node, list):
            for value in node:
                yield from property_names(value)

    declared = {k for m in registry.methods().values() for k in m.keys}
    other_sections = {"layers", "alpha", "model", "rank"}   # config sections, or keys of other sections
    assert not (declared - other_sections) & set(property_names(SCHEMA))


def test_the_composed_arm_schema_is_the_registry():
    import jsonschema

    schema = registry.arm_schema()
    assert schema["properties"]["method"]["enum"] == list(registry.methods())
    check = jsonschema.Draft202012Validator(schema)
    assert check.is_valid({"method": "lora", "rank": 4, "train": {}})
    assert not check.is_valid({"method": "lora", "strength": 1.0})     # dim's setting, not lora's
    assert not check.is_valid({"method": "lora", "rank": 0})
    assert not check.is_valid({"method": "nope"})


def test_a_wrong_value_names_the_arm_the_key_and_what_the_setting_means():
    cfg = load(ROOT / "config.yaml")
    with pytest.raises(ConfigError, match=r"arms\.l\.rank: 0 is less than the minimum of 1 \(method 'lora'; LoRA rank\)"):
        check_arm(cfg, "l", {"method": "lora", "rank": 0, "train": {}}, ROOT)
    with pytest.raises(ConfigError, match=r"arms\.e\.model\.source: 'x' is not one of"):
        check_arm(cfg, "e", {"method": "external", "model": {"source": "x"}, "train": {}}, ROOT)
    with pytest.raises(ConfigError, match=r"arms\.g\.gate_mode: 'soft' is not one of \['scale', 'clamp'\]"):
        check_arm(cfg, "g", {"method": "sae_gate", "gate_mode": "soft", "train": {}}, ROOT)
    # load() applies the same declarations as the workflow
    bad = ROOT / "config.yaml"
    with pytest.raises(ConfigError, match=r"arms\.lora\.dropout: 2 is greater than the maximum of 1"):
        load(bad, {"arms": {"lora": {"dropout": 2}}})


def test_config_readme_arms_table_is_generated_from_the_declarations():
    from mmie.arms import docs

    text = (ROOT / "config" / "README.md").read_text()
    assert docs.rewrite(text) == text, "config/README.md's arms table is stale: python -m mmie.arms.docs config/README.md"
    for name, m in registry.methods().items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        for s in m.settings:
            assert f"`{s.name}` (" in row


def test_settings_are_declared_once_with_their_defaults():
    from mmie.arms.method import Setting

    with pytest.raises(ValueError, match="declared twice"):
        Method(name="x", summary="x", build=lambda ctx: None,
               settings=(Setting("k", {"type": "number"}, "a"), Setting("k", {"type": "number"}, "b")))
    with pytest.raises(ValueError, match="not in its schema"):
        Setting("k", {"type": "number", "default": 1}, "a")
    with pytest.raises(ValueError, match="lower-case identifier"):
        Setting("train", {"type": "object"}, "a")
    assert registry.method("lora").defaults == {"rank": 8, "alpha": 16, "dropout": 0.0,
                                                "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert "gate_alpha" not in registry.method("sae_gate").defaults      # from the config's gate section


def test_every_method_module_declares_itself_under_its_own_name():
    for name, m in registry.methods().items():
        assert isinstance(m, Method) and m.name == name
        assert m.defaults.keys() <= set(m.keys)
        assert all(s.description for s in m.settings) and (m.description or m.summary)


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


def extending_example() -> tuple[str, str]:
    """The method module docs/extending.md shows (its file name and code)."""
    import re

    text = (ROOT / "docs" / "extending.md").read_text()
    block = re.search(r"```python\n# mmie/arms/methods/(\w+)\.py\n(.*?)```", text, re.S)
    assert block, "docs/extending.md no longer shows a method module"
    return block.group(1), block.group(2)


def test_a_new_method_is_one_module_the_workflow_plans(tmp_path):
    """Adding an arm is one module: a copy of the workflow with the method module docs/extending.md shows
    (no schema, rule or list edited) plans the arm's evaluation, and refuses a wrong setting by key."""
    import shutil
    import subprocess

    from conftest import SNAKEMAKE, planned_jobs, reduced_config

    wf = tmp_path / "wf"
    wf.mkdir()
    for part in ("Snakefile", "rules", "scripts", "envs", "config", "profiles", "report", "mmie"):
        src = ROOT / part
        (shutil.copytree(src, wf / part, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, wf / part))
    name, code = extending_example()
    (wf / "mmie" / "arms" / "methods" / f"{name}.py").write_text(code)
    work = tmp_path / "work"
    work.mkdir()
    path = reduced_config(work)
    cfg = yaml.safe_load(path.read_text())
    cfg["arms"] = {"base": cfg["arms"]["base"], "toy": {"method": name, "factor": 0.8}}
    cfg["robustness"] = {"attacks": []}

    def plan(config):
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        return subprocess.run(SNAKEMAKE + ["-s", str(wf / "Snakefile"), "-d", str(work), "--configfile", str(path),
                                           "--cores", "1", "-n"],
                              capture_output=True, text=True, timeout=600, cwd=work,
                              env={**__import__("os").environ, "PYTHONPATH": str(wf)})

    res = plan(cfg)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = res.stdout + res.stderr
    assert "arm=toy, seed=0" in out and planned_jobs(res)["evaluate"] == 2     # base and toy, seedless
    cfg["arms"]["toy"]["factor"] = -1
    res = plan(cfg)
    assert res.returncode != 0 and "arms.toy.factor: -1 is less than or equal to the minimum of 0" in res.stdout + res.stderr
    cfg["arms"]["toy"] = {"method": name, "strength": 1}
    res = plan(cfg)
    assert f"arms.toy: ['strength'] is not a setting of method '{name}' (it takes: factor, layers)" in res.stdout + res.stderr
