"""The relearning attack (mmie.attacks.relearn): a fresh LoRA on top of the arm, the arm on throughout,
nothing of the model or the arm changed afterwards."""
import copy

import pytest
import torch

from mmie.arms import Arm, build
from mmie.arms.edit_arms import EditAdapter
from mmie.arms.lora_adapter import LoraAdapter
from mmie.arms.reft_adapter import ReftAdapter
from mmie.attacks.relearn import HookLora, batches, relearn
from mmie.errors import ConfigError
from mmie.model.generation import special_prefix
from mmie.model.hooks import hook_count
from mmie.model.loading import LoadedModel

PROBE = "मेरा नाम राज है and the weather"
SETTINGS = {"lr": 1e-2, "rank": 4, "batch_size": 4, "max_length": 32, "seed": 3}


def logits_of(model, tok, text=PROBE):
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits.clone()


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def lora_arm(model, tok, tmp_path):
    torch.manual_seed(1)
    adapter = LoraAdapter.create(model, {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
    with torch.no_grad():
        for n, p in adapter.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapter.save(tmp_path / "ckpt")
    base = adapter.model.unload()           # the plain model again, as a job loads it
    return build("lora", {"method": "lora"}, LoadedModel(base, tok), str(tmp_path / "ckpt"))


def edit_arm(model, tok):
    shift = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    return Arm(name="steer", method="dim", model=model,
               adapter=EditAdapter(model, {1: lambda h: h + shift.to(h.dtype)}, skip_prefix=special_prefix(tok)))


def reft_arm(model, tok):
    torch.manual_seed(4)
    return Arm(name="reft", method="reft", model=model, adapter=ReftAdapter(model, [1], 2, "loreft"))


@pytest.mark.parametrize("kind", ["base", "lora", "edit", "reft"])
def test_relearn_measures_the_arm_then_the_arm_with_a_trained_lora_and_leaves_everything_as_it_was(
        tiny_lm, demo_texts, tmp_path, kind):
    model, tok = tiny_lm
    model = copy.deepcopy(model)
    base_logits = logits_of(model, tok)
    arm = {"base": lambda: Arm(name="base", method="base", model=model), "lora": lambda: lora_arm(model, tok, tmp_path),
           "edit": lambda: edit_arm(model, tok), "reft": lambda: reft_arm(model, tok)}[kind]()
    with arm.active():
        arm_logits = logits_of(arm.model, tok)
    if kind != "base":
        assert not torch.allclose(arm_logits, base_logits, atol=1e-3)     # the arm does something
    hooks = hook_count(arm.model)
    before = state(arm.model)
    adapter_before = state(arm.adapter.interventions) if kind == "reft" else None
    flags = {n: p.requires_grad for n, p in arm.model.named_parameters()}
    seen = []

    def measure(m):
        assert arm.is_active and m is arm.model
        assert hook_count(m) > hooks                 # the fresh LoRA's hooks (and the arm's) are on
        seen.append(logits_of(m, tok))
        return len(seen)

    results, details = relearn(arm, LoadedModel(model, tok), demo_texts["hi"][:4], [6, 0, 3], measure=measure,
                               **SETTINGS)
    assert [k for k, _ in results] == [0, 3, 6] and [r for _, r in results] == [1, 2, 3]
    # k = 0: the arm exactly as it generates without the attack (the fresh LoRA starts at B = 0)
    assert torch.equal(seen[0], arm_logits)
    assert not torch.allclose(seen[2], seen[0], atol=1e-3)                # training moved it
    losses = details["losses"]              # one batch (4 texts, batch_size 4): the same NLL, falling
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0] - 0.01
    n_lora = sum(4 * (m.in_features + m.out_features) for name, m in model.named_modules()
                 if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj") and hasattr(m, "in_features"))
    assert details["trainable_params"] == n_lora and details["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # afterwards: the same weights, flags and hooks, the arm off (a LoRA arm's adapter disabled)
    assert not arm.is_active and hook_count(arm.model) == hooks
    assert same_state(before, state(arm.model))
    assert flags == {n: p.requires_grad for n, p in arm.model.named_parameters()}
    assert all(p.grad is None for p in arm.model.parameters())
    if kind == "lora":
        assert not arm.adapter.enabled()
    if kind == "reft":
        assert same_state(adapter_before, state(arm.adapter.interventions))
    with arm.active():
        assert torch.equal(logits_of(arm.model, tok), arm_logits)
    assert torch.equal(logits_of(model, tok), base_logits)      # outside active(): the base model


def test_relearn_is_deterministic_in_its_seed(tiny_lm, demo_texts):
    model, tok = tiny_lm
    arm = Arm(name="base", method="base", model=copy.deepcopy(model))
    runs = [relearn(arm, LoadedModel(arm.model, tok), demo_texts["hi"][:12], [4], measure=lambda m: logits_of(m, tok),
                    **{**SETTINGS, "seed": s})[0] for s in (3, 3, 5)]
    assert torch.equal(runs[0][0][1], runs[1][0][1])
    assert not torch.equal(runs[0][0][1], runs[2][0][1])


def test_hook_lora_is_a_lora_on_the_linear_output(tiny_lm):
    model, tok = tiny_lm
    model = copy.deepcopy(model)
    lora = HookLora(model, ["v_proj"], rank=2, alpha=4, seed=0)
    name, module = next(iter(lora.modules.items()))
    a, b = lora.lora[name.replace(".", "__")]
    with torch.no_grad():
        b.weight.normal_()
    x = torch.randn(3, module.in_features)
    with lora.attached():
        out = module(x)
    assert torch.allclose(out, module(x) + 2.0 * (x @ a.weight.T @ b.weight.T), atol=1e-5)


def test_batches_cycle_through_every_text_in_a_seeded_order():
    out = batches([[1, 2]] * 5, 2, 5, seed=0)
    assert [len(b) for b in out] == [2] * 5
    flat = sum(out, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert out == batches([[1, 2]] * 5, 2, 5, seed=0) and out != batches([[1, 2]] * 5, 2, 5, seed=1)


def test_relearn_refuses_a_model_without_the_target_projections(demo_texts, tiny_lm):
    _, tok = tiny_lm
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    arm = Arm(name="odd", method="base", model=net)
    with pytest.raises(ConfigError, match="no module named any of"):
        relearn(arm, LoadedModel(net, tok), ["a b c"], [1], measure=lambda m: None, **SETTINGS)
    assert not arm.is_active
