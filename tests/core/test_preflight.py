"""Layer indices and LoRA targets are checked against the model's architecture at `snakemake -n`."""

import copy

import pytest

from mmie import preflight
from mmie.config import load
from mmie.errors import ConfigError
from tests.conftest import ROOT, smk


@pytest.fixture()
def cfg(demo_config):
    return copy.deepcopy(demo_config)


def test_demo_layers_and_lora_targets_pass(cfg, tmp_path):
    out = preflight.check(cfg, ROOT, cache_dir=tmp_path)
    assert out["checked"] and out["layers"] == cfg["demo_model"]["layers"]
    assert out["lora_targets"]["lora"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert out["lora_targets"]["rmu"] == ["gate_proj", "up_proj", "down_proj"]   # every method with targets


def test_a_layer_the_model_does_not_have_is_named(cfg, tmp_path):
    cfg["layers"]["force_layers"] = [1, cfg["demo_model"]["layers"]]
    with pytest.raises(ConfigError, match=r"layers.force_layers: layers \[4\] do not exist.*layers 0..3"):
        preflight.check(cfg, ROOT, cache_dir=tmp_path)
    cfg["layers"]["force_layers"] = None
    cfg["arms"]["reft"]["layers"] = [-1]
    with pytest.raises(ConfigError, match=r"arms.reft.layers"):
        preflight.check(cfg, ROOT, cache_dir=tmp_path)


def test_a_lora_target_the_model_does_not_have_is_named(cfg, tmp_path):
    cfg["arms"]["lora"]["targets"] = ["q_proj", "query_key_value"]
    with pytest.raises(ConfigError, match=r"arms.lora.targets: \['query_key_value'\] match no module.*q_proj"):
        preflight.check(cfg, ROOT, cache_dir=tmp_path)


def test_an_rmu_target_the_model_does_not_have_is_named(cfg, tmp_path):
    cfg["arms"]["rmu"]["targets"] = ["down_proj", "fc2"]
    with pytest.raises(ConfigError, match=r"arms.rmu.targets: \['fc2'\] match no module"):
        preflight.check(cfg, ROOT, cache_dir=tmp_path)


def qwen(**model):
    return load(ROOT / "config" / "qwen2.5-1.5b-a100.yaml", {"model": model})


def test_the_qwen_profile_is_checked_from_its_shipped_config_json(tmp_path):
    cfg = qwen()
    out = preflight.check(cfg, ROOT, cache_dir=tmp_path)
    assert out["checked"] and out["layers"] == 28
    cfg["layers"]["force_layers"] = [28]
    with pytest.raises(ConfigError, match="layers 0..27"):
        preflight.check(cfg, ROOT, cache_dir=tmp_path)


def test_the_gemma_profiles_are_checked_from_their_shipped_config_json(tmp_path):
    # a project folder with the shipped configs and no results (a converted model there is checked instead)
    work = tmp_path / "project"
    work.mkdir()
    (work / "config").symlink_to(ROOT / "config")
    for name in ("gemma3-270m.yaml", "gemma3-270m-cpu.yaml"):
        out = preflight.check(load(ROOT / "config" / name), work, cache_dir=tmp_path)
        assert out["checked"] and out["layers"] == 18 and out["origin"] == "config/models/gemma3-270m.json", name


def test_an_unknown_architecture_source_is_skipped_with_the_reason(tmp_path):
    cfg = qwen(config_json=None, revision="0" * 40)
    out = preflight.check(cfg, tmp_path, cache_dir=tmp_path)
    assert not out["checked"] and "no config.json" in out["why"]


def test_dry_run_stops_on_a_bad_layer(tmp_path):
    from tests.conftest import reduced_config

    path = reduced_config(tmp_path)
    path.write_text(path.read_text() + "\n")
    import yaml

    cfg = yaml.safe_load(path.read_text())
    cfg["layers"]["force_layers"] = [9]
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = smk(tmp_path, "-n", check=False)
    assert res.returncode != 0 and "layers.force_layers: layers [9] do not exist" in res.stdout + res.stderr


def test_a_shipped_config_json_is_found_from_any_working_directory(tmp_path):
    out = preflight.check(qwen(), tmp_path, cache_dir=tmp_path)        # tmp_path has no config/models/
    assert out["checked"] and out["origin"] == "config/models/qwen2.5-1.5b-instruct.json"
    with pytest.raises(ConfigError, match="model.config_json: file not found: nowhere.json"):
        preflight.check(qwen(config_json="nowhere.json"), tmp_path, cache_dir=tmp_path)
