"""Token KL(base ‖ arm) and the arm on/off rule (mmie.arms.state) for every kind of arm.

The reference computation uses two separately loaded copies of the model: a base copy with
nothing attached, and an arm copy with the arm switched on exactly once; evaluate's code path
(``mmie.model.likelihood.token_kl`` on one copy, batched and padded) must agree to 1e-4 relative. The
old evaluate computed the KL inside ``arm.active()``, so for ReFT and every edit arm the "base"
pass ran with the arm on and the arm pass applied it twice (script_scrub: KL 0)."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from mmie import arms
from mmie.arms import methods
from mmie.arms.edit_arms import LayerAssets
from mmie.arms.state import ArmStateError
from mmie.model.hooks import hook_count
from mmie.model.likelihood import arm_contexts, token_kl

LAYER = 1
LORA = {"rank": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
SPECS = {
    "base": {"method": "base"},
    "prompt": {"method": "prompt", "instruction": "Respond only in English."},
    "lora": {"method": "lora", **LORA},
    "reft": {"method": "reft"},
    "sae_gate": {"method": "sae_gate"},
    "random_gate": {"method": "random_gate"},
    "dim": {"method": "dim"},
    "script_scrub": {"method": "script_scrub"},
    "lora_gate": {"method": "sae_gate", "on": "lora"},
}
CONFIG = {"arms": SPECS, "gate": {"alpha": 1.0, "mode": "scale", "clamp": 0.0}, "layers": {"force_layers": None}}
CHANGES = [a for a in SPECS if a != "base"]      # arms that change the model's predictions


def bos_tokenizer(tok):
    """The demo tokenizer with a special prefix (its EOS as BOS, like GPT-2): ``special_prefix`` is
    ``[eos_id]``."""
    from tokenizers.processors import TemplateProcessing

    t = copy.deepcopy(tok)
    t.__dict__.pop("_mmie_prefix", None)
    t._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                     special_tokens=[("<|endoftext|>", t.eos_token_id)])
    return t


@pytest.fixture(scope="module")
def assets(tiny_lm, tmp_path_factory):
    """Everything the arms load, built small: selection, a random SAE in the checked format, its
    features, the directions, a LoRA and a ReFT checkpoint (random, so they change the model)."""
    from sae_lens import TopKSAE, TopKSAEConfig

    from mmie import io
    from mmie.arms.fingerprint import model_fingerprint
    from mmie.arms.lora_adapter import LoraAdapter
    from mmie.arms.reft_adapter import ReftAdapter
    from mmie.sae.autoencoder import save_sae
    from mmie.sae.directions import fit_layer_directions, save_directions

    model, _ = tiny_lm
    root = tmp_path_factory.mktemp("arm_assets")
    d = model.config.hidden_size
    fp = model_fingerprint(model)
    io.write_json(root / "layers" / "selection.json", {"layers": [LAYER]})
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=64, k=8, dtype="float32", device="cpu"))
    with torch.no_grad():
        sae.W_dec.mul_(4.0)
    save_sae(sae, root / "sae" / f"layer{LAYER}", {"layer": LAYER, "model_fingerprint": fp})
    chosen = list(range(0, 64, 3))
    pool = [i for i in range(64) if i not in chosen]
    io.write_json(root / "sae" / "features" / f"layer{LAYER}.json",
                  {"layer": LAYER, "features": [{"index": i, "freq_forget": 0.5 + i / 200} for i in chosen],
                   "alive": list(range(64)), "method": "test",
                   "control_pool": {"index": pool, "freq_forget": [0.4 + i / 150 for i in pool],
                                    "filters": ["test"], "requires": "test"}})
    g = torch.Generator().manual_seed(3)
    acts = {"forget": torch.randn(60, d, generator=g) + 0.5, "retain": torch.randn(60, d, generator=g),
            "forget_romanized": torch.randn(60, d, generator=g) - 1.0}
    save_directions(root / "acts" / f"layer{LAYER}.directions.safetensors", fit_layer_directions(acts),
                    {"layer": str(LAYER), "model_fingerprint": fp})
    lora = LoraAdapter.create(copy.deepcopy(model), LORA)
    with torch.no_grad():
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=g)
    lora.save(root / "lora")
    torch.manual_seed(1)
    (root / "reft").mkdir()
    ReftAdapter(copy.deepcopy(model), [LAYER], 2, "loreft").save(root / "reft")
    return root


def build(name, tiny_lm, root, tok=None):
    """The arm ``name`` on a fresh copy of the tiny model, built as evaluate builds it."""
    model, base_tok = tiny_lm
    loaded = SimpleNamespace(model=copy.deepcopy(model).eval(), tokenizer=tok or base_tok)
    spec = SPECS[name]
    trained = spec.get("on") or (name if methods.method(spec["method"]).trains else None)
    return arms.build(name, spec, loaded, str(root / trained) if trained else None, config=CONFIG, seed=0,
                      assets=LayerAssets.from_inputs({
                          "selection": root / "layers" / "selection.json", f"sae{LAYER}": root / "sae" / f"layer{LAYER}",
                          f"features{LAYER}": root / "sae" / "features" / f"layer{LAYER}.json",
                          f"directions{LAYER}": root / "acts" / f"layer{LAYER}.directions.safetensors"}))


def texts(demo_texts):
    # different lengths, so batches are padded; English and Hindi
    return [demo_texts["en"][0], demo_texts["en"][1][:40], demo_texts["hi"][0], demo_texts["en"][2][:15],
            demo_texts["hi"][1][:60]]


def two_copy_kl(arm_name, tiny_lm, root, tok, items) -> list[float]:
    """KL(base ‖ arm) per text, one text at a time (no padding), with a base copy that has nothing
    attached and an arm copy with the arm switched on exactly once."""
    base_model = copy.deepcopy(tiny_lm[0]).eval()
    arm = build(arm_name, tiny_lm, root, tok)
    base_ctx, arm_ctx = arm_contexts(arm, tok)
    out = []
    with torch.inference_mode():
        for text in items:
            t = tok(text, add_special_tokens=False)["input_ids"]
            n = len(t) - 1
            p = torch.log_softmax(base_model(input_ids=torch.tensor([base_ctx + t])).logits.float(), -1)
            with arm.active():
                q = torch.log_softmax(arm.model(input_ids=torch.tensor([arm_ctx + t])).logits.float(), -1)
            p, q = p[0, len(base_ctx):len(base_ctx) + n], q[0, len(arm_ctx):len(arm_ctx) + n]
            out.append(float((p.exp() * (p - q)).sum()))
    assert hook_count(base_model) == 0
    return out


@pytest.mark.parametrize("with_bos", [False, True], ids=["no_prefix", "bos"])
@pytest.mark.parametrize("arm_name", CHANGES)
def test_token_kl_equals_kl_between_two_separate_model_copies(arm_name, with_bos, tiny_lm, assets, demo_texts):
    tok = bos_tokenizer(tiny_lm[1]) if with_bos else tiny_lm[1]
    items = texts(demo_texts)
    arm = build(arm_name, tiny_lm, assets, tok)
    got = [k["kl"] for k in token_kl(arm, tok, items, batch_size=3)]
    want = two_copy_kl(arm_name, tiny_lm, assets, tok, items)
    assert min(want) > 1e-3, f"{arm_name}: the arm should change the predictions of every text"
    assert got == pytest.approx(want, rel=1e-4)
    assert hook_count(arm.model) == 0


def test_base_arm_has_zero_kl(tiny_lm, assets, demo_texts):
    arm = build("base", tiny_lm, assets)
    assert all(k["kl"] == 0.0 and k["tokens"] > 0 for k in token_kl(arm, tiny_lm[1], texts(demo_texts)))


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arm_name", list(SPECS))
def test_arm_state_rule(arm_name, tiny_lm, assets):
    """Outside active() the model is the base model (bit for bit); active() does not nest;
    reference() inside active() raises; the adapter's own active() cannot be entered inside the arm's."""
    model, tok = tiny_lm
    ids = torch.tensor([tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]])
    clean = _logits(model, ids)
    arm = build(arm_name, tiny_lm, assets)
    assert torch.equal(_logits(arm.model, ids), clean)          # off means off (LoRA too, after loading)
    with arm.reference():
        assert torch.equal(_logits(arm.model, ids), clean)
        with pytest.raises(ArmStateError, match="do not nest"), arm.active():
            pass
    with arm.active():
        if arm_name in CHANGES and arm_name != "prompt":
            assert not torch.allclose(_logits(arm.model, ids), clean, atol=1e-4)
        with pytest.raises(ArmStateError, match=r"active\(\) entered inside active\(\)"), arm.active():
            pass
        with pytest.raises(ArmStateError, match=r"reference\(\) entered inside active\(\)"), arm.reference():
            pass
        if arm.adapter is not None:
            with pytest.raises(ArmStateError), arm.adapter.active():
                pass
            inner = getattr(arm.adapter, "inner", None)
            if inner is not None:
                with pytest.raises(ArmStateError), inner.active():
                    pass
    # after the errors the arm is off again, and switches on again
    assert not arm.is_active and hook_count(arm.model) == 0
    assert torch.equal(_logits(arm.model, ids), clean)
    with arm.active():
        pass


def test_lora_enabled_behind_mmies_back_is_refused(tiny_lm, assets):
    arm = build("lora", tiny_lm, assets)
    arm.model.base_model.enable_adapter_layers()
    with pytest.raises(ArmStateError, match="not the base model"), arm.reference():
        pass
    with pytest.raises(ArmStateError, match="already enabled"), arm.active():
        pass


def test_lora_keeps_its_requires_grad_flags(tiny_lm, assets):
    """peft's enable/disable flips requires_grad of the adapter weights; mmie keeps them as created."""
    from mmie.arms.lora_adapter import LoraAdapter

    loaded = build("lora", tiny_lm, assets).adapter
    trainable = LoraAdapter.create(copy.deepcopy(tiny_lm[0]), LORA)
    for adapter, flag in ((loaded, False), (trainable, True)):
        for _ in range(2):
            with adapter.active():
                assert adapter.enabled()
            assert not adapter.enabled()
            assert all(p.requires_grad is flag for p in adapter.parameters())


def test_manifest_records_the_unedited_positions(tiny_lm, assets):
    arm = build("sae_gate", tiny_lm, assets, bos_tokenizer(tiny_lm[1]))
    assert arm.details["unedited_positions"] == {"padding": True, "special_prefix": [tiny_lm[1].eos_token_id]}
    assert json.dumps(arm.details)   # goes into the manifest as is
