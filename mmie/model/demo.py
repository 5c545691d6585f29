"""The demo model (docs/method.md §2): a byte-level BPE tokenizer and a small Qwen2-architecture causal LM,
trained from scratch on the prepared demo corpus on a CPU, saved as a standard HF folder, then
checked: Hindi prompts continue in Hindi, English in English, and without degenerate repetition.

The pre-tokenizer keeps ``[\\p{L}\\p{M}]+`` together: the stock byte-level pattern splits Devanagari
words at every vowel sign (combining marks are \\p{M}), which nearly doubles Hindi token counts."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

from mmie.errors import ModelError

log = logging.getLogger(__name__)
EOS, PAD = "<|endoftext|>", "<|pad|>"
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}\p{M}]+| ?\p{N}+| ?[^\s\p{L}\p{M}\p{N}]+|\s+(?!\S)|\s+"""


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   model_max_length=max_length, padding_side="left")


def build_model(cfg: Mapping, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv_heads"],
        intermediate_size=cfg["intermediate_size"], max_position_embeddings=cfg["max_position"],
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, use_cache=True)
    return Qwen2ForCausalLM(config)


def _batch(seqs: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask, labels


def heldout_loss(model, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> float:
    """Token-weighted mean NLL (padding masked)."""
    import torch

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            ids, mask, labels = _batch(seqs[i:i + batch_size], pad_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                    labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels[:, 1:] != -100).sum())
    model.train(was_training)
    return total / count


def load_tokenizer(folder: str | Path):
    """The tokenizer ``train_tokenizer`` made, read back from a demo model folder as it was built (the
    same class and settings, so that saving it again writes byte-identical files; transformers'
    ``from_pretrained`` adds loading options to tokenizer_config.json)."""
    import json

    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    saved = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if saved.get("eos_token") != EOS or saved.get("pad_token") != PAD:
        raise ModelError(f"{folder} holds no demo-model tokenizer (eos {saved.get('eos_token')!r}, pad "
                         f"{saved.get('pad_token')!r}; expected {EOS!r}, {PAD!r})")
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token=EOS, pad_token=PAD,
                                   model_max_length=saved["model_max_length"], padding_side=saved["padding_side"])


def train(cfg: Mapping, train_texts: list[str], heldout: dict[str, list[str]], out_dir: str | Path,
          tokenizer=None) -> dict:
    """Train the model (and its tokenizer, on ``train_texts``, unless one is given), keep the state with
    the lowest mean held-out loss, save an HF folder. A given tokenizer (the oracle: the base model's) is
    used as it is, so token ids, vocabulary and likelihoods stay comparable with the model it came from."""
    import torch

    from mmie.seeding import seed_everything

    seed_everything(cfg["seed"])
    t0 = time.time()
    if tokenizer is None:
        tokenizer = train_tokenizer(train_texts, cfg["vocab_size"], cfg["max_position"])
    elif tokenizer.model_max_length != cfg["max_position"]:
        raise ModelError(f"the given tokenizer's max length {tokenizer.model_max_length} is not demo_model.max_position "
                         f"{cfg['max_position']}: it was built with other demo_model settings")
    enc = lambda texts: [tokenizer(t, add_special_tokens=False)["input_ids"][:cfg["max_position"] - 1]
                         + [tokenizer.eos_token_id] for t in texts]  # noqa: E731
    train_seqs = enc(train_texts)
    held = {k: enc(v) for k, v in heldout.items()}
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("demo model: %d parameters, vocab %d, %d training sequences", n_params, len(tokenizer), len(train_seqs))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    steps, warm = cfg["max_steps"], cfg["warmup_steps"]

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg["seed"])
    best: tuple[float, dict | None, int] = (float("inf"), None, -1)   # (mean held-out loss, state, step)
    history = []
    bad_evals = 0
    model.train()
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="train demo model", mininterval=5.0)
    for step in bar:
        idx = torch.randint(len(train_seqs), (cfg["batch_size"],), generator=gen).tolist()
        ids, mask, labels = _batch([train_seqs[i] for i in idx], tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if not torch.isfinite(loss):
            raise ModelError(f"demo model training: non-finite loss {float(loss)} at step {step}; lower demo_model.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == steps:
            losses = {k: heldout_loss(model, v, tokenizer.pad_token_id) for k, v in held.items()}
            mean = sum(losses.values()) / len(losses)
            history.append({"step": step + 1, "train_loss": float(loss),
                            **{f"heldout_ppl_{k}": math.exp(v) for k, v in losses.items()}})
            log.info("step %d: %s", step + 1, history[-1])
            bar.set_postfix({k: round(v, 1) for k, v in history[-1].items() if k.startswith("heldout")})
            if mean < best[0]:
                best = (mean, {k: v.detach().clone() for k, v in model.state_dict().items()}, step + 1)
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= cfg["patience"]:
                    log.info("early stop at step %d (best step %d)", step + 1, best[2])
                    break
    model.load_state_dict(best[1])
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    best_row = next(h for h in history if h["step"] == best[2])
    return {"n_parameters": n_params, "vocab_size": len(tokenizer), "train_sequences": len(train_seqs),
            "best_step": best[2], "steps_run": history[-1]["step"], "history": history,
            "best_heldout": {k: v for k, v in best_row.items() if k.startswith("heldout")},
            "train_seconds": round(time.time() - t0, 1)}


def check_generations(by_lang: dict[str, dict], min_rate: float, min_distinct2: float,
                      max_repetitive: float) -> list[str]:
    """Problems with the demo model's continuations ({lang: {rate, distinct2, repetitive_share}});
    empty when fine. Language rate alone is not enough: a model that answers " है है है" has a perfect
    Hindi rate, so degenerate repetition is checked too."""
    problems = []
    for lang, res in by_lang.items():
        if res["rate"] < min_rate:
            problems.append(f"{lang} prompts continue in {lang} only {res['rate']:.0%} of the time "
                            f"(need >= {min_rate:.0%})")
        if res["distinct2"] is None or res["distinct2"] < min_distinct2:
            problems.append(f"{lang} continuations are degenerate: mean word distinct-2 {res['distinct2']} "
                            f"(need >= {min_distinct2})")
        if res["repetitive_share"] > max_repetitive:
            problems.append(f"{lang} continuations are repetitive: {res['repetitive_share']:.0%} of outputs "
                            f"(allowed <= {max_repetitive:.0%})")
    return problems
