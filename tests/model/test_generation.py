"""Generation and likelihoods on a tiny random model (docs/method.md §3, §5; reliability rows 1, 4)."""
import pytest
import torch

from mmie.model.generation import Decoding, encode_prompt, generate
from mmie.model.likelihood import perplexity, score_sequences

PROMPTS = ["मेरा नाम", "The weather today is", "हम कल बाज़ार", "A", "She reads books in the evening and"]


def items():
    return [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]


def test_batched_generation_equals_one_by_one_and_keeps_order(tiny_lm):
    model, tok = tiny_lm
    batched = generate(model, tok, items(), Decoding(max_new_tokens=8, batch_size=5))
    single = generate(model, tok, items(), Decoding(max_new_tokens=8, batch_size=1))
    assert [g["id"] for g in batched] == [f"p{i}" for i in range(len(PROMPTS))]
    assert [g["output_ids"] for g in batched] == [g["output_ids"] for g in single]
    assert all(g["output_tokens"] == len(g["output_ids"]) <= 8 for g in batched)


def test_truncation_applies_to_content_before_template_and_is_counted(tiny_lm):
    model, tok = tiny_lm
    long_prompt = "the weather " * 40
    ids, truncated = encode_prompt(tok, long_prompt, None, Decoding(max_prompt_tokens=10))
    assert truncated and len(ids) == 10
    ids, truncated = encode_prompt(tok, "short", "Respond only in English.", Decoding(max_prompt_tokens=10))
    assert not truncated
    sys_ids = tok("Respond only in English.\n", add_special_tokens=False)["input_ids"]
    assert ids[:len(sys_ids)] == sys_ids      # the instruction is never truncated
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    try:
        ids, truncated = encode_prompt(tok, long_prompt, "SYS", Decoding(max_prompt_tokens=10))
        text = tok.decode(ids)
        assert truncated and text.startswith("<system>SYS<user>") and text.endswith("<assistant>")
    finally:
        tok.chat_template = None


def test_oom_halves_batch_and_is_recorded(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    real = model.generate
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", flaky)
    oom = []
    out = generate(model, tok, items(), Decoding(max_new_tokens=4, batch_size=4), oom_log=oom)
    assert calls[0] == 4 and calls[1] == 2
    assert oom == [{"where": "generate", "new_batch_size": 2}]
    assert len(out) == len(PROMPTS)


def test_oom_at_batch_size_one_is_a_clear_error(tiny_lm, monkeypatch):
    model, tok = tiny_lm

    def always(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(model, "generate", always)
    with pytest.raises(RuntimeError, match="out of memory at batch size 1"):
        generate(model, tok, items()[:2], Decoding(max_new_tokens=4, batch_size=2))


def test_padding_does_not_change_scores_and_no_graph_is_built(tiny_lm):
    model, tok = tiny_lm
    texts = ["मेरा नाम राज है", "The weather today is very pleasant and warm in the city"]
    targets = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    grad_seen = []
    handle = model.model.layers[0].register_forward_hook(lambda m, i, o: grad_seen.append(torch.is_grad_enabled()))
    try:
        alone = [score_sequences(model, tok.pad_token_id, [[]], [t])[0] for t in targets]
        batched = score_sequences(model, tok.pad_token_id, [[], []], targets, batch_size=2)
    finally:
        handle.remove()
    for a, b in zip(alone, batched, strict=True):
        assert a["tokens"] == b["tokens"] == len(targets[alone.index(a)]) - 1
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-5)
    assert grad_seen and not any(grad_seen)
    assert all(p.grad is None for p in model.parameters())


def test_context_tokens_are_not_scored(tiny_lm):
    model, tok = tiny_lm
    ctx = tok("Respond only in English.\n", add_special_tokens=False)["input_ids"]
    tgt = tok("hello world", add_special_tokens=False)["input_ids"]
    s = score_sequences(model, tok.pad_token_id, [ctx], [tgt])[0]
    assert s["tokens"] == len(tgt)
    assert perplexity(s["nll"], s["tokens"]) > 1
    with pytest.raises(ValueError):
        perplexity(0.0, 0)


def _lora_arm(tiny_lm):
    """A LoRA arm on a copy of the tiny model (random B, so the adapter changes the outputs); its
    adapter weights and the model's own weights require grad, as after training."""
    import copy

    from mmie.arms import Arm
    from mmie.arms.lora_adapter import LoraAdapter

    model, _ = tiny_lm
    adapter = LoraAdapter.create(copy.deepcopy(model), {"rank": 2, "alpha": 4, "dropout": 0.0,
                                                        "targets": ["q_proj", "v_proj"]})
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for n, p in adapter.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=g)
    for p in adapter.model.parameters():
        p.requires_grad_(True)
    return Arm(name="lora", method="lora", model=adapter.model, adapter=adapter)


def _grad_tensors() -> dict[int, torch.Tensor]:
    import gc

    gc.collect()
    return {id(o): o for o in gc.get_objects()
            if isinstance(o, torch.Tensor) and not isinstance(o, torch.nn.Parameter) and o.requires_grad}


def test_evaluation_keeps_no_autograd_graph(tiny_lm):
    """Scoring, token KL, MIA scores and generation build no autograd graph (tracemalloc cannot
    see torch's memory; a kept graph is what would grow): no output of a forward pass has a
    grad_fn, no parameter gets a .grad, and no tensor that requires grad outlives the calls —
    on a model whose weights all require grad."""
    from mmie.model.likelihood import mia_scores, token_kl

    _, tok = tiny_lm
    arm = _lora_arm(tiny_lm)
    model = arm.model
    assert all(p.requires_grad for p in model.parameters())
    outputs = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: outputs.append(o))
    texts = ["The weather today is", "मेरा नाम राज है", "She reads books in the evening"]
    targets = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    before = _grad_tensors()
    try:
        for _ in range(2):
            with arm.active():
                scores = score_sequences(model, tok.pad_token_id, [[]] * 3, targets)
                mia = mia_scores(model, tok.pad_token_id, targets)
                gens = generate(model, tok, items(), Decoding(max_new_tokens=4, batch_size=2))
            kls = token_kl(arm, tok, texts)
    finally:
        handle.remove()
    assert len(outputs) > 10 and all(o.grad_fn is None and not o.requires_grad for o in outputs)
    assert all(p.grad is None for p in model.parameters())
    outputs.clear()
    assert not set(_grad_tensors()) - set(before), "tensors that require grad outlived the evaluation"
    # the results are plain numbers, not tensors that could hold a graph
    for row in scores + mia + kls:
        assert all(isinstance(v, (int, float, bool)) for v in row.values())
    assert all(isinstance(t, int) for g in gens for t in g["output_ids"])


def test_sampled_generation_is_seeded_on_an_adapted_model(tiny_lm):
    """Sampling on a LoRA-adapted model: the same seed gives the same outputs whatever the global
    RNG did in between; another seed gives others."""
    _, tok = tiny_lm
    arm = _lora_arm(tiny_lm)
    dec = Decoding(max_new_tokens=12, min_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0)
    with arm.active():
        a = generate(arm.model, tok, items(), dec, seed=0)
        torch.manual_seed(1234)
        torch.rand(7)
        b = generate(arm.model, tok, items(), dec, seed=0)
        c = generate(arm.model, tok, items(), dec, seed=1)
        greedy = generate(arm.model, tok, items(), Decoding(max_new_tokens=12, min_new_tokens=12))
    ids = lambda gens: [g["output_ids"] for g in gens]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert ids(a) != ids(greedy)      # it really sampled
