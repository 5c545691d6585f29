"""The external arm: a model unlearned elsewhere (a plain peft adapter folder, or a whole model
folder) evaluated like any other arm; missing or mismatched folders are clear errors."""
import copy
import subprocess

import pytest
import torch
import yaml

from conftest import ROOT, SNAKEMAKE, planned_jobs
from mmie import arms
from mmie.config import arm_seeds, check, load
from mmie.errors import ConfigError, ModelError
from mmie.model.loading import LoadedModel


def loaded(model, tok, name="tiny-base") -> LoadedModel:
    return LoadedModel(model=copy.deepcopy(model), tokenizer=tok,
                       runtime={"model": name, "device": "cpu", "dtype": "float32", "quantization": "none"})


def logits(model, tok, text="मेरा नाम राम है and the cat"):
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids).logits


def plain_peft_adapter(model, folder, *, targets=("q_proj", "v_proj")):
    """What someone else did: a LoRA made and saved with peft alone, outside the workflow."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    peft_model.save_pretrained(str(folder))
    return folder


def test_plain_peft_adapter_builds_and_changes_outputs_vs_base(tiny_lm, tmp_path):
    model, tok = tiny_lm
    folder = plain_peft_adapter(model, tmp_path / "adapter")
    base_logits = logits(model, tok)
    arm = arms.build("ext", {"method": "external", "adapter": str(folder)}, loaded(model, tok))
    assert arm.method == "external" and arm.details["peft_type"] == "LORA" and len(arm.details["adapter_sha256"]) == 64
    with arm.active():
        on = logits(arm.model, tok)
    with arm.reference():
        off = logits(arm.model, tok)
    assert torch.allclose(off, base_logits, atol=1e-6)          # reference(): the base model's view
    assert (on - base_logits).abs().max() > 1e-3                 # the adapter changes the outputs


def test_whole_model_folder_is_the_arm_and_base_stays_the_reference(tiny_lm, tmp_path):
    model, tok = tiny_lm
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save_pretrained(str(tmp_path / "unlearned"))
    tok.save_pretrained(str(tmp_path / "unlearned"))
    spec = {"method": "external", "model": {"source": "local", "path": str(tmp_path / "unlearned")}}
    arm = arms.build("ext", spec, loaded(model, tok))
    with arm.active():
        on = logits(arm.model, tok)
    with arm.reference():
        off = logits(arm.model, tok)
    assert torch.allclose(on, logits(other, tok), atol=1e-5)
    assert torch.allclose(off, logits(model, tok), atol=1e-5)
    assert arm.details["model"]["model"] == str(tmp_path / "unlearned")


def test_whole_model_with_another_tokenizer_is_refused(tiny_lm, demo_texts, tmp_path):
    from mmie.model.demo import train_tokenizer

    model, tok = tiny_lm
    model.save_pretrained(str(tmp_path / "m"))
    train_tokenizer(demo_texts["en"][:100], vocab_size=300, max_length=128).save_pretrained(str(tmp_path / "m"))
    spec = {"method": "external", "model": {"source": "local", "path": str(tmp_path / "m")}}
    with pytest.raises(ModelError, match=r"arms\.ext\.model: the tokenizer .* differs"):
        arms.build("ext", spec, loaded(model, tok))


def test_adapter_for_another_model_is_a_clear_error_at_load(tiny_lm, tmp_path):
    from mmie.model.demo import build_model

    model, tok = tiny_lm
    wider = build_model({"hidden_size": 48, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate_size": 64,
                         "max_position": 128}, tok)
    folder = plain_peft_adapter(wider, tmp_path / "wide_adapter")
    with pytest.raises(ModelError, match=r"arms\.ext\.adapter: the adapter in .*wide_adapter does not fit the base model"):
        arms.build("ext", {"method": "external", "adapter": str(folder)}, loaded(model, tok))
    folder = plain_peft_adapter(model, tmp_path / "mlp_adapter", targets=("gate_proj",))
    # an adapter on modules the model has is fine; one naming a module it lacks is not
    arms.build("ext", {"method": "external", "adapter": str(folder)}, loaded(model, tok))
    folder = plain_peft_adapter(model, tmp_path / "renamed")
    (folder / "adapter_config.json").write_text(
        (folder / "adapter_config.json").read_text().replace('"q_proj"', '"query_key_value"'))
    with pytest.raises(ModelError, match=r"arms\.ext\.adapter"):
        arms.build("ext", {"method": "external", "adapter": str(folder)}, loaded(model, tok))


@pytest.mark.parametrize("spec,needle", [
    ({"method": "external", "adapter": "no/such/folder"}, r"arms\.ext\.adapter: adapter folder not found: no/such/folder"),
    ({"method": "external"}, r"arms\.ext: method 'external' needs exactly one of 'adapter'"),
    ({"method": "external", "model": {"source": "hub", "id": "org/model"}}, r"arms\.ext\.model: source 'hub' needs"),
    ({"method": "external", "model": {"source": "local", "path": "nowhere"}}, r"arms\.ext\.model\.path: 'nowhere'"),
    ({"method": "prompt", "instruction": "x", "adapter": "a"}, r"arms\.ext: \['adapter'\] is not a setting of method 'prompt'"),
])
def test_config_check_names_the_external_arm(spec, needle):
    with pytest.raises(ConfigError, match=needle):   # the declared settings (load), then the method's check
        check(load(ROOT / "config.yaml", {"arms": {"ext": spec}}), ROOT)


def test_adapter_folder_without_weights_is_a_config_error(tiny_lm, tmp_path):
    model, _ = tiny_lm
    folder = plain_peft_adapter(model, tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    cfg = load(ROOT / "config.yaml", {"arms": {"ext": {"method": "external", "adapter": str(folder)}}})
    with pytest.raises(ConfigError, match="the adapter weights are missing"):
        check(cfg, ROOT)


def test_external_arm_is_seedless_in_the_plan(tiny_lm, tmp_path):
    """Three seeds: the external arm, like base, is seed-independent and evaluated once; a missing adapter
    stops `snakemake -n` with the arm named."""
    from conftest import reduced_config

    model, _ = tiny_lm
    folder = plain_peft_adapter(model, tmp_path / "adapter")
    path = reduced_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["seeds"] = [0, 1, 2]
    cfg["arms"] = {"base": cfg["arms"]["base"], "ext": {"method": "external", "adapter": str(folder)}}
    cfg["robustness"] = {"attacks": []}     # relearning attacks every seed: here only the evaluation is planned
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert arm_seeds(load(path), "ext") == [0] and arm_seeds(load(path), "base") == [0]
    cmd = SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", str(path), "--cores", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res)
    assert jobs["evaluate"] == 1 + 1 and "train" not in jobs, jobs
    assert "/ext/seed0/evaluate.json" in res.stdout and "/ext/seed1/" not in res.stdout
    assert str(folder) in res.stdout                     # the adapter folder is an input of its evaluation
    cfg["arms"]["ext"]["adapter"] = str(tmp_path / "gone")
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "arms.ext.adapter: adapter folder not found" in res.stdout + res.stderr


def test_adapter_by_hub_id_and_revision_from_the_local_cache(tiny_lm, tmp_path, monkeypatch):
    """``adapter: {source: hub, id, revision}``: the snapshot in the local Hugging Face cache at that
    revision is the adapter (offline, nothing downloaded); one not in the cache stops the config check
    with the command that fetches it; the revision is required."""
    import huggingface_hub.constants as hf_constants

    model, tok = tiny_lm
    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--unlearned-lora" / "snapshots" / revision
    plain_peft_adapter(model, snapshot)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {"method": "external", "adapter": {"source": "hub", "id": "someone/unlearned-lora", "revision": revision}}
    cfg = load(ROOT / "config.yaml", {"arms": {"ext": spec}})
    check(cfg, ROOT)
    arm = arms.build("ext", spec, loaded(model, tok))
    local = arms.build("ext", {"method": "external", "adapter": str(snapshot)}, loaded(model, tok))
    assert arm.details["adapter"] == f"hub:someone/unlearned-lora@{revision}"
    assert arm.details["adapter_sha256"] == local.details["adapter_sha256"]
    with arm.active():
        on = logits(arm.model, tok)
    with local.active():
        assert torch.equal(on, logits(local.model, tok))
    from mmie.arms.external_model import files

    assert files(spec) == []          # read from the cache at a pinned revision, like a hub model
    missing = {**spec, "adapter": {**spec["adapter"], "id": "someone/elsewhere"}}
    with pytest.raises(ConfigError, match=r"arms\.ext\.adapter: someone/elsewhere@0123.* not in the local Hugging "
                                          r"Face cache.*snapshot_download as s; s\('someone/elsewhere'"):
        check(load(ROOT / "config.yaml", {"arms": {"ext": missing}}), ROOT)
    with pytest.raises(ConfigError, match=r"arms\.ext\.adapter: .*is not valid under any of the given schemas"):
        load(ROOT / "config.yaml", {"arms": {"ext": {"method": "external",
                                                     "adapter": {"source": "hub", "id": "someone/unlearned-lora"}}}})
