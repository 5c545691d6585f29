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


def bad_layer_config(workdir):
    """The reduced config with a layer the demo model does not have."""
    import yaml

    from tests.conftest import reduced_config

    path = reduced_config(workdir)
    cfg = yaml.safe_load(path.read_text())
    cfg["layers"]["force_layers"] = [9]
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def test_dry_run_stops_on_a_bad_layer(tmp_path):
    bad_layer_config(tmp_path)
    res = smk(tmp_path, "-n", check=False)
    assert res.returncode != 0 and "layers.force_layers: layers [9] do not exist" in res.stdout + res.stderr


def test_a_shipped_config_json_is_found_from_any_working_directory(tmp_path):
    out = preflight.check(qwen(), tmp_path, cache_dir=tmp_path)        # tmp_path has no config/models/
    assert out["checked"] and out["origin"] == "config/models/qwen2.5-1.5b-instruct.json"
    with pytest.raises(ConfigError, match="model.config_json: file not found: nowhere.json"):
        preflight.check(qwen(config_json="nowhere.json"), tmp_path, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- once per workflow run
def test_the_mark_names_one_config_in_one_working_directory(cfg, tmp_path, monkeypatch):
    monkeypatch.delenv(preflight.CHECKED_ENV, raising=False)
    assert not preflight.checked(cfg, tmp_path)
    preflight.mark_checked(cfg, tmp_path)
    assert preflight.checked(cfg, tmp_path)
    other = copy.deepcopy(cfg)
    other["seeds"] = [0]
    assert not preflight.checked(other, tmp_path)
    assert not preflight.checked(cfg, tmp_path / "elsewhere")


def test_the_checks_leave_the_config_as_they_found_it(tmp_path):
    """A job's parse computes the mark of its config before the checks would run, the main process
    after they ran: the two agree only if the checks change nothing."""
    from mmie.config import check

    names = ["config.yaml", "config/qwen2.5-1.5b-a100.yaml", "config/gemma3-270m-cpu.yaml", "config/studies/forget-bn.yaml"]
    for name in names:
        cfg = load(ROOT / name)
        before = copy.deepcopy(cfg)
        check(cfg, ROOT)
        preflight.check(cfg, ROOT, cache_dir=tmp_path)
        assert cfg == before, name


def test_a_parse_that_finds_the_mark_of_its_config_skips_the_checks(tmp_path, monkeypatch):
    """What a cluster job's parse of the Snakefile does: the main process that checked this config
    in this working directory left its mark in the job's environment. Another mark checks again."""
    path = bad_layer_config(tmp_path)
    monkeypatch.setenv(preflight.CHECKED_ENV, preflight.checked_key(load(path), tmp_path))
    res = smk(tmp_path, "-n", check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    monkeypatch.setenv(preflight.CHECKED_ENV, preflight.checked_key(load(path), tmp_path / "elsewhere"))
    res = smk(tmp_path, "-n", check=False)
    assert res.returncode != 0 and "layers.force_layers: layers [9] do not exist" in res.stdout + res.stderr
