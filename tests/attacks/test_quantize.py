"""The quantization attack (mmie.attacks.quantize): bitsandbytes 8-bit (LLM.int8) and 4-bit (NF4) reloads
on the CPU, the LoRA arm merged before quantizing.

Tolerances, measured on this tiny trained model (hidden 64, 2 layers, trained 200 steps; its decoder
layers' outputs are worth 0.5 nats of NLL, so their quantization shows) on 16 held-out texts, then
given a margin: the mean per-token NLL of the unmodified model reloaded at 8 bit is within 0.1 % of
float32's (measured: 0.001 %), at 4 bit within 1 % (measured: 0.06 %)."""
import math

import pytest
import torch

from mmie.arms import build
from mmie.arms.fingerprint import model_fingerprint
from mmie.arms.lora_adapter import LoraAdapter
from mmie.arms.objectives import masked_mean, token_logprobs
from mmie.arms.reft_adapter import ReftAdapter
from mmie.arms.state import ArmStateError
from mmie.attacks.quantize import plan, quantized_arm, quantized_modules
from mmie.errors import ConfigError
from mmie.model.likelihood import right_pad
from mmie.model.loading import load_model

REL_TOL = {8: 1e-3, 4: 1e-2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_lm, demo_texts):
    """A tiny Qwen2 (hidden 64) trained for 200 steps on demo texts (NLL well below uniform), saved."""
    from mmie.model.demo import build_model

    _, tok = tiny_lm
    torch.manual_seed(0)
    model = build_model({"hidden_size": 64, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate_size": 128,
                         "max_position": 128}, tok)
    seqs = [tok(t, add_special_tokens=False)["input_ids"][:32] for t in demo_texts["hi"][:64] + demo_texts["en"][:64]]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(200):
        ids, mask = right_pad([seqs[(step * 16 + i) % len(seqs)] for i in range(16)], tok.pad_token_id, "cpu")
        lp, valid = token_logprobs(model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        loss = -masked_mean(lp, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("q") / "model"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def cfg(folder) -> dict:
    return {"source": "local", "path": str(folder), "device": "cpu", "dtype": "float32", "attn_implementation": "auto",
            "quantization": "none"}


def nll(model, tok, texts) -> float:
    seqs = [tok(t, add_special_tokens=False)["input_ids"][:32] for t in texts]
    ids, mask = right_pad(seqs, tok.pad_token_id, "cpu")
    with torch.no_grad():
        lp, valid = token_logprobs(model(input_ids=ids, attention_mask=mask).logits.float(), ids, mask)
    return float(-masked_mean(lp, valid))


HELD_OUT = slice(300, 308)


def test_a_quantized_reload_of_an_unmodified_model_matches_float32_within_the_tolerance(model_dir, demo_texts, tmp_path):
    texts = demo_texts["hi"][HELD_OUT] + demo_texts["en"][HELD_OUT]
    fp = load_model(cfg(model_dir))
    ref = nll(fp.model, fp.tokenizer, texts)
    assert ref < math.log(len(fp.tokenizer)) - 1.0            # a trained model, not a uniform one
    errors = {}
    for bits in (8, 4):
        arm, q = quantized_arm("base", {"method": "base"}, cfg(model_dir), None, None, bits=bits, workdir=str(tmp_path))
        assert q.runtime["quantization"] == f"{bits}bit" and arm.model is q.model
        assert quantized_modules(arm.model) == 2 * 7            # q k v o gate up down of both layers
        assert arm.details["quantization"]["merged"] is False and "nothing to merge" in arm.details["quantization"]["why_not"]
        assert model_fingerprint(arm.model) == model_fingerprint(fp.model)   # edit arms' assets still fit
        errors[bits] = abs(nll(arm.model, q.tokenizer, texts) - ref) / ref
        assert 0 < errors[bits] <= REL_TOL[bits], (bits, errors[bits])
    assert errors[4] > errors[8]                                 # NF4 loses more than LLM.int8
    assert list(tmp_path.iterdir()) == []                        # nothing was saved for an unmerged arm


def lora_checkpoint(model_dir, folder):
    fp = load_model(cfg(model_dir))
    torch.manual_seed(1)
    adapter = LoraAdapter.create(fp.model, {"rank": 4, "alpha": 8, "dropout": 0.0,
                                            "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    with torch.no_grad():
        for n, p in adapter.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    adapter.save(folder)
    return str(folder)


def test_the_merged_lora_arm_at_8_bit_gives_nearly_the_logits_of_the_unmerged_float32_arm(model_dir, tiny_lm, tmp_path):
    ckpt = lora_checkpoint(model_dir, tmp_path / "ckpt")
    fp = load_model(cfg(model_dir))
    ids = fp.tokenizer("मेरा नाम राज है and the weather is fine today", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        base = fp.model(**ids).logits
    fp_arm = build("lora", {"method": "lora"}, fp, ckpt)
    with torch.no_grad(), fp_arm.active():
        want = fp_arm.model(**ids).logits
    arm, q = quantized_arm("lora", {"method": "lora"}, cfg(model_dir), None, ckpt, bits=8,
                           workdir=str(tmp_path / "work"))
    assert arm.details["quantization"]["merged"] is True and arm.details["quantization"]["why_not"] is None
    assert not any("lora_" in n for n, _ in arm.model.named_parameters()) and quantized_modules(arm.model) == 14
    assert list((tmp_path / "work").iterdir()) == []             # the merged copy is deleted after loading
    with torch.no_grad(), arm.active():
        got = arm.model(**ids).logits
    base8 = load_model({**cfg(model_dir), "quantization": "8bit"})
    with torch.no_grad():
        base_error = float((base8.model(**ids).logits - base).abs().max())   # what 8 bit does to the base model
    effect = float((want - base).abs().max())                  # what the LoRA does
    error = float((got - want).abs().max())
    # measured (max |logit difference|, logits' std 2.7): the LoRA's effect 1.06, the 8-bit error of the base
    # model 0.25, of the merged arm 0.16. The merged arm quantizes like the base model (allowed: 1.5 x its
    # error) and is the arm, not the base model (allowed: a third of the LoRA's effect)
    assert error <= 1.5 * base_error and error < effect / 3, (error, base_error, effect)
    with pytest.raises(ArmStateError, match="no base model"):
        with arm.reference():
            pass


def test_an_arm_that_cannot_be_merged_stays_on_over_the_quantized_model(model_dir, tmp_path):
    arm, q = quantized_arm("ask", {"method": "prompt", "instruction": "Answer in English."}, cfg(model_dir), None, None,
                           bits=4, workdir=str(tmp_path))
    assert arm.system == "Answer in English." and arm.model is q.model and quantized_modules(q.model) == 14
    assert arm.details["quantization"]["merged"] is False and "instruction" in arm.details["quantization"]["why_not"]


def test_merge_plan_per_method():
    config = {"arms": {"lora": {"method": "lora"}, "reft": {"method": "reft"},
                       "gate_on_lora": {"method": "sae_gate", "on": "lora"}, "gate_on_reft": {"method": "sae_gate", "on": "reft"},
                       "dim": {"method": "dim"}}}
    assert plan("lora", {"method": "lora"}, config) == ("peft", None)
    assert plan("rmu", {"method": "rmu"}, config) == ("peft", None)
    assert plan("ext", {"method": "external", "adapter": "a"}, config) == ("peft", None)
    assert plan("gate_on_lora", config["arms"]["gate_on_lora"], config) == ("inner", None)
    for name, spec, why in [("ext", {"method": "external", "model": {"source": "local"}}, "whole model"),
                            ("oracle", {"method": "oracle"}, "whole model"), ("reft", {"method": "reft"}, "ReFT"),
                            ("dim", {"method": "dim"}, "hooks"), ("gate_on_reft", config["arms"]["gate_on_reft"], "ReFT"),
                            ("base", {"method": "base"}, "nothing to merge")]:
        what, reason = plan(name, spec, config)
        assert what is None and why in reason, (name, reason)


@pytest.mark.parametrize("bits", [16, 2, 3, "8", True])
def test_other_bit_widths_are_refused_naming_the_setting(bits, tmp_path):
    with pytest.raises(ConfigError, match=r"robustness\.quantize\.bits"):
        quantized_arm("base", {"method": "base"}, cfg(tmp_path / "absent"), None, None, bits=bits, workdir=str(tmp_path))


def logits_gap(model_dir, ids, fp_logits) -> float:
    """Max |logit difference| that 8 bit alone makes to the base model (the scale of the errors below)."""
    base8 = load_model({**cfg(model_dir), "quantization": "8bit"})
    with torch.no_grad():
        return float((base8.model(**ids).logits - fp_logits).abs().max())


def test_a_reft_arm_stays_on_in_full_precision_over_the_quantized_model(model_dir, tmp_path):
    fp = load_model(cfg(model_dir))
    torch.manual_seed(5)
    reft = ReftAdapter(fp.model, [1], 2, "loreft")
    with torch.no_grad():                                      # an intervention that does something
        reft.interventions["1"].learned_source.bias.normal_(0, 10.0)
    reft.save(tmp_path)
    ids = fp.tokenizer("मेरा नाम राज है and the weather", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        base = fp.model(**ids).logits
    fp_arm = build("reft", {"method": "reft"}, fp, str(tmp_path))
    with torch.no_grad(), fp_arm.active():
        want = fp_arm.model(**ids).logits
    arm, q = quantized_arm("reft", {"method": "reft"}, cfg(model_dir), None, str(tmp_path), bits=8,
                           workdir=str(tmp_path / "work"))
    assert arm.details["quantization"]["merged"] is False and "ReFT" in arm.details["quantization"]["why_not"]
    assert arm.adapter.model is q.model and all(p.dtype == torch.float32 for p in arm.adapter.parameters())
    with torch.no_grad(), arm.active():
        got = arm.model(**ids).logits
    with torch.no_grad(), arm.reference():                     # not merged: its base model is there
        assert not torch.allclose(arm.model(**ids).logits, got, atol=1e-3)
    effect, error = float((want - base).abs().max()), float((got - want).abs().max())
    assert error <= 1.5 * logits_gap(model_dir, ids, base) and error < effect / 3, (error, effect)


def test_an_edit_arm_on_a_lora_arm_gets_the_lora_merged_and_keeps_its_edits(model_dir, tmp_path, monkeypatch):
    """The edits of a real edit arm need layer assets (SAE, directions); here ``mmie.arms.build`` makes the
    same structure (an EditAdapter over the LoRA arm it sits on) with a fixed steering edit."""
    import mmie.arms
    from mmie.arms.edit_arms import EditAdapter
    from mmie.model.generation import special_prefix
    from mmie.model.hooks import hook_count

    ckpt = lora_checkpoint(model_dir, tmp_path / "ckpt")
    shift = torch.randn(64, generator=torch.Generator().manual_seed(2))
    real_build = mmie.arms.build

    def build_steer(name, spec, loaded, checkpoint=None, **kw):
        assert name == "steer" and checkpoint == ckpt
        inner = real_build("lora", {"method": "lora"}, loaded, checkpoint).adapter
        return mmie.arms.Arm(name=name, method="sae_gate", model=inner.model, details={"on": "lora"},
                             adapter=EditAdapter(inner.model, {1: lambda h: h + shift}, inner,
                                                 skip_prefix=special_prefix(loaded.tokenizer)))

    monkeypatch.setattr(mmie.arms, "build", build_steer)
    config = {"arms": {"lora": {"method": "lora"}, "steer": {"method": "sae_gate", "on": "lora"}}}
    fp = load_model(cfg(model_dir))
    ids = fp.tokenizer("मेरा नाम राज है and the weather", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        base = fp.model(**ids).logits
    fp_arm = build_steer("steer", {}, fp, ckpt)
    with torch.no_grad(), fp_arm.active():
        want = fp_arm.model(**ids).logits
    arm, q = quantized_arm("steer", config["arms"]["steer"], cfg(model_dir), None, ckpt, bits=8, config=config,
                           workdir=str(tmp_path / "work"))
    info = arm.details["quantization"]
    assert info["merged"] is True and "lora" in info["how"] and "edits" in info["how"]
    assert not any("lora_" in n for n, _ in q.model.named_parameters()) and quantized_modules(q.model) == 14
    with torch.no_grad(), arm.active():
        assert hook_count(q.model) > 0                           # the edit is on
        got = arm.model(**ids).logits
    assert hook_count(q.model) == 0
    with pytest.raises(ArmStateError, match="no base model"):
        with arm.reference():
            pass
    effect, error = float((want - base).abs().max()), float((got - want).abs().max())
    assert error <= 1.5 * logits_gap(model_dir, ids, base) and error < effect / 3, (error, effect)
