"""Atomic writes, provenance and configuration validation (reliability: bad configuration, partial files)."""
import copy

import pytest
import yaml
from snakemake.utils import validate

from conftest import ROOT
from mmie import io, provenance
from mmie.config import SCHEMA, check, load
from mmie.errors import ConfigError


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "m.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(ValueError, match="non-finite"):
        io.write_json(target, {"a": float("nan")})
    assert io.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_provenance_has_the_method_fields(demo_config, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("data")
    p = provenance.build(demo_config, {"lid": demo_config["lid"]}, seed=3, inputs=[f], runtime={"dtype": "float32"})
    for key in ("config_hash", "config_section", "git", "libraries", "device", "runtime", "seed", "data_hashes"):
        assert key in p
    assert p["libraries"]["torch"] == "2.13.0+cpu" or p["libraries"]["torch"].startswith("2.13.0")
    assert p["data_hashes"][str(f)] == provenance.file_sha256(f)
    changed = copy.deepcopy(demo_config)
    changed["seeds"] = [9]
    assert provenance.config_hash(changed) != p["config_hash"]


def raw_demo():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c.update(unknown_key=1), "unknown_key"),
    (lambda c: c.update(seeds=[]), "seeds"),
    (lambda c: c.update(seeds="0"), "seeds"),
    (lambda c: c["arms"].update(weird={"method": "telepathy"}), "telepathy"),
    (lambda c: c["generation"].update(max_new_tokens="many"), "many"),
])
def test_schema_rejects_bad_config(mutate, needle):
    cfg = raw_demo()
    mutate(cfg)
    with pytest.raises(Exception) as err:
        validate(cfg, str(SCHEMA), set_default=True)
    assert needle in str(err.value)


def test_semantic_checks_name_the_key(tmp_path):
    cfg = load(ROOT / "config.yaml")
    cfg["data"]["neighbours"]["ur"] = "data/demo/missing.jsonl"
    with pytest.raises(ConfigError, match=r"data\.neighbours\.ur: file not found"):
        check(cfg, ROOT)
    cfg = load(ROOT / "config.yaml")
    cfg["arms"]["p2"] = {"method": "prompt"}
    with pytest.raises(ConfigError, match="arms.p2"):
        check(cfg, ROOT)
    cfg = load(ROOT / "config.yaml", {"model": {"source": "hub", "id": "Qwen/Qwen2.5-1.5B-Instruct"}})
    with pytest.raises(ConfigError, match="revision"):
        check(cfg, ROOT)


def test_demo_config_is_valid_and_filled_with_defaults():
    cfg = load(ROOT / "config.yaml")
    check(cfg, ROOT)
    assert cfg["model"]["attn_implementation"] == "auto"
    assert cfg["lid"]["voters"]["fasttext"]["model"] == "bundled"
