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
    """The schema file, then each arm against its method's declared settings (as rules/common.smk does)."""
    from mmie.config import validate_arm

    cfg = raw_demo()
    mutate(cfg)
    with pytest.raises(Exception) as err:
        validate(cfg, str(SCHEMA), set_default=True)
        for arm, spec in cfg["arms"].items():
            validate_arm(arm, spec)
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


@pytest.mark.parametrize("old,new", [("gpu_mem_mb", "model_job_mem_mb"), ("cpu_mem_mb", "light_job_mem_mb")])
def test_a_renamed_key_is_refused_with_its_new_name(tmp_path, old, new):
    import subprocess

    from conftest import SNAKEMAKE
    from mmie.config import RENAMED, refuse_renamed

    cfg = raw_demo()
    cfg.setdefault("resources", {})[old] = 4000
    with pytest.raises(ConfigError, match=rf"resources\.{old} was renamed resources\.{new} \(it is the host memory"):
        refuse_renamed(cfg)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=rf"resources\.{new}"):
        load(path)
    # and the workflow refuses it before anything runs (rules/common.smk), with the same message
    res = subprocess.run(SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", str(path),
                                      "--cores", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and f"resources.{old} was renamed resources.{new}" in res.stdout + res.stderr
    cfg["resources"][new] = cfg["resources"].pop(old)
    refuse_renamed(cfg)
    assert all(k.startswith("resources.") for k in RENAMED)


def test_demo_config_is_valid_and_filled_with_defaults():
    cfg = load(ROOT / "config.yaml")
    check(cfg, ROOT)
    assert cfg["model"]["attn_implementation"] == "auto"
    assert cfg["lid"]["voters"]["fasttext"]["model"] == "bundled"


# ----------------------------------------------------------------------------- GPU jobs, threads, device
def test_gpu_job_without_a_gpu_fails_unless_the_config_allows_the_cpu(monkeypatch):
    import torch

    from mmie.errors import ModelError
    from mmie.model.loading import setup_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(provenance, "_JOB_DEVICE", None)
    cfg = load(ROOT / "config.yaml", {"resources": {"allow_cpu": False}})
    with pytest.raises(ModelError, match=r"rule evaluate requests a GPU \(resources gpu=1\) but would run on the CPU: "
                                         r"torch finds no CUDA device.*resources\.allow_cpu: true"):
        setup_job("evaluate", 2, {"gpu": 1, "mem_mb": 100}, cfg)
    assert setup_job("score", 1, {"mem_mb": 100}, cfg) == "cpu"          # a CPU job is not refused
    before = torch.get_num_threads()
    try:
        cfg["resources"]["allow_cpu"] = True
        assert setup_job("evaluate", 2, {"gpu": 1}, cfg) == "cpu"
        assert torch.get_num_threads() == 2                              # the threads Snakemake gave the job
        assert provenance.device_info()["device"] == "cpu"
    finally:
        torch.set_num_threads(before)


def test_gpu_job_told_to_use_the_cpu_on_a_gpu_machine_is_refused_and_the_used_device_is_recorded(monkeypatch):
    import torch

    from mmie.errors import ModelError
    from mmie.model.loading import setup_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(provenance, "_JOB_DEVICE", None)
    cfg = load(ROOT / "config.yaml", {"resources": {"allow_cpu": False}})
    with pytest.raises(ModelError, match="the config asks for device 'cpu'"):
        setup_job("train", 1, {"gpu": 1}, cfg, "cpu")
    provenance.record_device("cpu")
    # the machine offers CUDA (patched), the job computed on the CPU: provenance says what was used
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "patched GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: None)
    info = provenance.device_info()
    assert info["device"] == "cpu" and info["available"] == "cuda:0"


def gpu_rules() -> dict[str, str]:
    """rule -> script of every rule that declares resources gpu=1 (rules/*.smk)."""
    import re

    out = {}
    for smk in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=\s*(?:rule|checkpoint) )", smk.read_text()):
            m = re.match(r"\s*(?:rule|checkpoint) (\w+):", block)
            if m and re.search(r"\bgpu=1\b", block):
                out[m.group(1)] = re.search(r'script:\s*"\.\./(scripts/\w+\.py)"', block).group(1)
    return out


def test_every_gpu_job_checks_its_device_and_uses_the_threads_snakemake_gave_it():
    import re

    rules = gpu_rules()
    assert {"evaluate", "train", "train_sae", "build_demo_model", "sweep_gate"} <= set(rules)
    for rule, script in rules.items():
        assert "setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config" in \
            (ROOT / script).read_text(), (rule, script)
    # no job sets torch's threads from a config constant
    for py in list((ROOT / "mmie").rglob("*.py")) + list((ROOT / "scripts").glob("*.py")):
        assert not re.search(r"set_num_threads\(config", py.read_text()), py


def test_torch_rules_declare_the_configured_threads(tmp_path):
    import subprocess

    from conftest import SNAKEMAKE, reduced_config

    path = reduced_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["resources"]["torch_threads"] = 2
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = subprocess.run(SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", str(path),
                                      "--cores", "4"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = res.stdout.split("\nrule ")
    evaluate = [j for j in jobs if j.startswith("evaluate:")]
    assert evaluate and all("threads: 2" in j for j in evaluate)


def test_model_folders_are_written_in_one_piece(tmp_path):
    """io.atomic_dir: a failed block leaves the old folder untouched and no temporary behind; a
    killed run's temporaries are swept at the next start; success replaces the folder."""
    from mmie import io

    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    stale = tmp_path / ".model.killed123"
    stale.mkdir()
    with pytest.raises(RuntimeError):
        with io.atomic_dir(out) as tmp:
            (tmp / "half.bin").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and (out / "old.txt").read_text() == "old"
    stale.mkdir()
    with io.atomic_dir(out) as tmp:
        assert not stale.exists()
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()       # nothing visible before the block ends
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_demo_is_the_base_only_of_a_configuration_that_names_no_study(tmp_path, monkeypatch):
    """mmie.config.with_demo (rules/common.smk): no --configfile → the demo; --config overrides of demo keys
    (a lone experiment renames the run) → the demo with them on top; a study → itself, nothing of the demo."""
    import copy

    from mmie.config import with_demo

    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg: dict = {}
    assert with_demo(cfg, ROOT / "config.yaml") and cfg == demo
    cfg = {"experiment": "again", "generation": {"max_new_tokens": 8}}
    assert with_demo(cfg, ROOT / "config.yaml")
    want = copy.deepcopy(demo)
    want["experiment"], want["generation"]["max_new_tokens"] = "again", 8
    assert cfg == want                                   # deep merge: the rest of generation stays the demo's
    study = {"experiment": "s", "languages": {}, "data": {}, "arms": {"base": {"method": "base"}}}
    assert not with_demo(study, ROOT / "config.yaml") and set(study) == {"experiment", "languages", "data", "arms"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no study config given .* no demo config config.yaml"):
        with_demo({}, "config.yaml")


def test_temporary_environment_sets_removes_and_restores_even_on_error(monkeypatch):
    import os

    from mmie.environment import temporary

    monkeypatch.setenv("MMIE_T_SET", "before")
    monkeypatch.delenv("MMIE_T_UNSET", raising=False)
    with pytest.raises(RuntimeError):
        with temporary(MMIE_T_SET=None, MMIE_T_UNSET="inside"):
            assert "MMIE_T_SET" not in os.environ and os.environ["MMIE_T_UNSET"] == "inside"
            raise RuntimeError("the block fails")
    assert os.environ["MMIE_T_SET"] == "before" and "MMIE_T_UNSET" not in os.environ
