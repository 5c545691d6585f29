"""Generation (docs/method.md §3): one decoding configuration for every arm and set; batched with left
padding, prompts sorted by length; truncation applies to the prompt content before any chat template
and is counted; every generation is returned with its prompt id and token counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mmie.model.memory import in_batches
from mmie.seeding import derived_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    chat_template: str = "auto"  # auto | on | off
    max_prompt_tokens: int = 128
    batch_size: int = 16

    @classmethod
    def from_config(cls, cfg: dict) -> "Decoding":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def uses_template(tokenizer, decoding: Decoding) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if decoding.chat_template == "on" and not has:
        raise ValueError("generation.chat_template is 'on' but the tokenizer has no chat template")
    return has if decoding.chat_template == "auto" else decoding.chat_template == "on"


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts in front of any text (Gemma's <bos>; nothing for Qwen2). Every
    sequence mmie builds from raw text starts with them, as the model saw in training."""
    cached = getattr(tokenizer, "_mmie_prefix", None)
    if cached is not None:
        return list(cached)
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    prefix = full[:len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []
    tokenizer._mmie_prefix = list(prefix)
    return list(prefix)


def encode_prompt(tokenizer, prompt: str, system: str | None, decoding: Decoding) -> tuple[list[int], bool]:
    """Token ids of one prompt, and whether its content was truncated (before the template)."""
    content_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    truncated = len(content_ids) > decoding.max_prompt_tokens
    if truncated:
        prompt = tokenizer.decode(content_ids[:decoding.max_prompt_tokens])
    if uses_template(tokenizer, decoding):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = special_prefix(tokenizer) + \
            (tokenizer(system + "\n", add_special_tokens=False)["input_ids"] if system else []) + \
            (content_ids[:decoding.max_prompt_tokens] if truncated else content_ids)
    return ids, truncated


def _left_pad(batch_ids: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, x in enumerate(batch_ids):
        ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    return ids.to(device), mask.to(device)


def generate(model, tokenizer, items: list[dict], decoding: Decoding, *, system: str | None = None,
             seed: int = 0, desc: str = "generate", oom_log: list | None = None) -> list[dict]:
    """Generate for ``items`` ({id, prompt}); returns one record per item in the input order.

    On an out-of-memory error the batch size halves and the batch is retried, down to 1; each halving
    is appended to ``oom_log`` (recorded in provenance; ``mmie.model.memory``)."""
    import torch

    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, it["prompt"], system, decoding) for it in items]
    order = sorted(range(len(items)), key=lambda i: (len(encoded[i][0]), i))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    gen_kwargs = dict(max_new_tokens=decoding.max_new_tokens, min_new_tokens=decoding.min_new_tokens,
                      do_sample=decoding.do_sample,
                      repetition_penalty=decoding.repetition_penalty, pad_token_id=pad, eos_token_id=eos)
    if decoding.no_repeat_ngram_size:
        gen_kwargs["no_repeat_ngram_size"] = decoding.no_repeat_ngram_size
    if decoding.do_sample:
        gen_kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    # Sampling is seeded per prompt (from the run seed and the prompt id), so it runs one prompt per call.
    batch_size = 1 if decoding.do_sample else decoding.batch_size
    results: dict[int, dict] = {}

    def run(start: int, stop: int) -> None:
        idx = order[start:stop]
        ids, mask = _left_pad([encoded[i][0] for i in idx], pad, device)
        if decoding.do_sample:
            torch.manual_seed(derived_seed(seed, items[idx[0]]["id"]))
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
        new = out[:, ids.shape[1]:].tolist()
        for row, i in enumerate(idx):
            toks = new[row]
            n = len(toks)
            for j, t in enumerate(toks):
                if t == eos or t == pad:
                    n = j
                    break
            gen_ids = toks[:n]
            results[i] = {
                "id": items[i]["id"], "prompt": items[i]["prompt"],
                "output": tokenizer.decode(gen_ids, skip_special_tokens=True).strip(),
                "prompt_tokens": len(encoded[i][0]), "output_tokens": n, "prompt_truncated": encoded[i][1],
                "output_ids": gen_ids, "stopped_by_eos": n < len(toks),
            }

    with torch.inference_mode():
        in_batches(len(order), batch_size, run, desc=desc, oom_log=oom_log,
                   hint="lower generation.max_new_tokens or max_prompt_tokens")
    return [results[i] for i in range(len(items))]
