"""Generation and likelihoods on a tiny random model (METHOD §3, §5; reliability rows 1, 4)."""
import pytest
import torch

from mmie.generation import Decoding, encode_prompt, generate
from mmie.likelihood import perplexity, score_sequences

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


def test_memory_does_not_grow_over_repeated_evaluations(tiny_lm):
    import gc
    import tracemalloc

    model, tok = tiny_lm
    targets = [tok("The weather today is", add_special_tokens=False)["input_ids"]] * 8
    score_sequences(model, tok.pad_token_id, [[]] * 8, targets)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(20):
        score_sequences(model, tok.pad_token_id, [[]] * 8, targets)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 2_000_000
