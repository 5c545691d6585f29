"""The planted suppression arm (mmie/arms/methods/logit_bias.py): target-script logits lowered by
exactly ``bias`` inside ``active()``, the base model outside it, no target-script letter generated."""

import pytest
import torch

from mmie import arms
from mmie.arms.methods.logit_bias import target_tokens
from mmie.arms.state import ArmStateError
from mmie.errors import ConfigError
from mmie.lang.scripts import char_script
from mmie.model.hooks import hook_count
from mmie.model.loading import LoadedModel


def devanagari(text: str) -> int:
    return sum(char_script(ch) == "devanagari" for ch in text)


@pytest.fixture(scope="module")
def chosen(tiny_lm):
    return target_tokens(tiny_lm[1], "devanagari")


def build(tiny_lm, config, **spec):
    model, tok = tiny_lm
    return arms.build("lb", {"method": "logit_bias", **spec}, LoadedModel(model=model, tokenizer=tok), config=config)


def logits(model, tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_the_tokens_that_write_the_target_script(tiny_lm, chosen):
    tok = tiny_lm[1]
    texts = [tok.decode([i]) for i in range(len(tok))]
    ids = set(chosen["ids"])
    assert {i for i, t in enumerate(texts) if devanagari(t)} <= ids            # every token holding a letter
    assert not {i for i, t in enumerate(texts) if t.isascii()} & ids           # no ASCII token
    # byte pieces: E0 A4 (the start of U+0900..U+093F) writes Devanagari only; a lone E0 byte starts Bengali too
    lead_pair, lone = tok.convert_tokens_to_ids("à¤"), tok.convert_tokens_to_ids("à")
    assert lead_pair in ids and lone not in ids
    assert chosen["pieces"] >= 1 and chosen["shared_pieces"] >= 1
    assert len(ids) == chosen["letters"] + chosen["pieces"]
    with pytest.raises(ConfigError, match="unknown script 'klingon'"):
        target_tokens(tok, "klingon")


def test_biased_logits_move_by_exactly_bias_inside_the_arm_only(tiny_lm, demo_config, chosen):
    model, tok = tiny_lm
    arm = build(tiny_lm, demo_config, bias=-5.0)
    assert arm.details["bias"] == -5.0 and arm.details["script"] == "devanagari"
    assert arm.details["biased_tokens"] == len(chosen["ids"]) > 0
    texts = ["नमस्ते दुनिया", "the cat sat"]
    base = logits(model, tok, texts)
    hooks = hook_count(model)
    with arm.active():
        on = logits(model, tok, texts)
        assert hook_count(model) == hooks + 1
    after = logits(model, tok, texts)
    assert hook_count(model) == hooks and torch.equal(after, base)             # outside: the base model
    biased = torch.zeros(base.shape[-1], dtype=torch.bool)
    biased[chosen["ids"]] = True
    torch.testing.assert_close(on[..., biased] - base[..., biased], torch.full_like(base[..., biased], -5.0),
                               rtol=0, atol=1e-5)
    assert torch.equal(on[..., ~biased], base[..., ~biased])                  # every other logit untouched


def test_default_bias_and_refusals(tiny_lm, demo_config):
    assert build(tiny_lm, demo_config).details["bias"] == -8.0
    with pytest.raises(ConfigError, match=r"arms\.lb\.bias must be negative"):
        build(tiny_lm, demo_config, bias=2.0)
    model, tok = tiny_lm
    with pytest.raises(ConfigError, match=r"needs the config \(languages\.target\.script\)"):
        arms.build("lb", {"method": "logit_bias"}, LoadedModel(model=model, tokenizer=tok))


def test_state_rules(tiny_lm, demo_config):
    model, tok = tiny_lm
    arm = build(tiny_lm, demo_config)
    hooks = hook_count(model)
    with arm.active():
        with pytest.raises(ArmStateError):
            with arm.active():
                pass
        with pytest.raises(ArmStateError):
            with arm.reference():
                pass
        with pytest.raises(ArmStateError):
            with arm.adapter.active():
                pass
    with pytest.raises(RuntimeError, match="boom"):
        with arm.active():
            raise RuntimeError("boom")
    assert hook_count(model) == hooks and not arm.is_active
    with arm.reference():
        pass


def test_generation_under_a_strong_bias_writes_no_target_script(tiny_lm, demo_config, demo_texts):
    from mmie.model.generation import Decoding, generate

    model, tok = tiny_lm
    items = [{"id": f"p{i}", "prompt": t[:20]} for i, t in enumerate(demo_texts["hi"][:8])]
    decoding = Decoding(max_new_tokens=16, do_sample=True, chat_template="off", batch_size=8)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    base = generate(model, tok, items, decoding, seed=0)
    assert sum(devanagari(g["output"]) for g in base) > 20                   # the base model writes Devanagari
    arm = build(tiny_lm, demo_config, bias=-30.0)
    with arm.active():
        out = generate(arm.model, tok, items, decoding, seed=0)
    assert [devanagari(g["output"]) for g in out] == [0] * len(items)
    assert all(g["output_tokens"] > 0 for g in out)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())   # the weights are untouched



def test_bias_shared_adds_the_shared_byte_pieces(tiny_lm, chosen):
    """``bias_shared: true`` biases the byte pieces the target script shares with other scripts too (the
    demo model writes Hindi through them at bias -8 otherwise); the default leaves them alone."""
    model, tok = tiny_lm
    config = {"languages": {"target": {"script": "devanagari"}}}
    plain, shared = build(tiny_lm, config, bias=-5.0), build(tiny_lm, config, bias=-5.0, bias_shared=True)
    assert chosen["shared_ids"] and not set(chosen["shared_ids"]) & set(chosen["ids"])
    assert shared.details["biased_tokens"] == plain.details["biased_tokens"] + len(chosen["shared_ids"])
    ref = logits(model, tok, ["hello"])[0, -1]
    with shared.active():
        got = logits(model, tok, ["hello"])[0, -1]
    moved = set(torch.nonzero((ref - got).abs() > 1e-4).flatten().tolist())
    assert moved == set(chosen["ids"]) | set(chosen["shared_ids"])
