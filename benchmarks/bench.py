"""Throughput benchmark (real-model issue): mmie's batched generation vs a naive per-prompt
``generate`` loop, and unlearning (LoRA) training tokens/s, on a randomly initialised model of
Qwen2.5-1.5B's shape (config in this folder; no download). Prints one JSON line per figure with the
device. ``--tiny`` uses a tiny model so CI can check that the script runs (not its speed).

    python benchmarks/bench.py            # on a GPU box
    python benchmarks/bench.py --tiny     # anywhere
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def emit(**row) -> None:
    print(json.dumps({"device": device_name(), **row}), flush=True)


def build(tiny: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mmie.model.demo import train_tokenizer

    texts = [line.split('"text": "')[1].split('"')[0] for line in
             (HERE.parent / "data" / "demo" / "retain_en.jsonl").read_text().splitlines()[:300]]
    tok = train_tokenizer(texts, vocab_size=1000, max_length=512)
    cfg = json.loads((HERE.parent / "config" / "models" / "qwen2.5-1.5b-instruct.json").read_text())
    if tiny:
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)
    cfg.update(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg)).to(device=device, dtype=dtype).eval()
    return model, tok, texts, str(dtype).replace("torch.", "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    from mmie.model.generation import Decoding, generate

    model, tok, texts, dtype = build(args.tiny)
    n, new = (8, 8) if args.tiny else (args.prompts, args.new_tokens)
    items = [{"id": f"p{i}", "prompt": " ".join(t.split()[:6])} for i, t in enumerate(texts[:n])]
    dec = Decoding(max_new_tokens=new, min_new_tokens=new, batch_size=n)
    generate(model, tok, items[:2], dec)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(model, tok, items, dec)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    batched = sum(g["output_tokens"] for g in out) / (time.perf_counter() - t0)
    emit(figure="generation_tokens_per_s", method="mmie_batched", value=round(batched, 1), prompts=n,
         new_tokens=new, dtype=dtype, model="tiny" if args.tiny else "qwen2.5-1.5b-shape")
    t0, total = time.perf_counter(), 0
    with torch.inference_mode():
        for it in items:
            ids = tok(it["prompt"], return_tensors="pt").to(model.device)
            o = model.generate(**ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               pad_token_id=tok.pad_token_id)
            total += o.shape[1] - ids["input_ids"].shape[1]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    naive = total / (time.perf_counter() - t0)
    emit(figure="generation_tokens_per_s", method="naive_per_prompt", value=round(naive, 1), prompts=n,
         new_tokens=new, dtype=dtype, speedup=round(batched / naive, 2))

    from mmie.sae.activations import collect
    from mmie.sae.autoencoder import train_sae

    layer = model.config.num_hidden_layers // 2
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    t0 = time.perf_counter()
    acts = collect(model, tok, texts, [layer], max_length=64, batch_size=32, desc="bench cache")[layer][0]
    sync()
    emit(figure="activation_cache_tokens_per_s", value=round(acts.shape[0] / (time.perf_counter() - t0), 1),
         tokens=int(acts.shape[0]), layer=layer, dtype=dtype)
    sae_cfg = {"expansion": 4 if args.tiny else 8, "k": 8 if args.tiny else 32, "lr": 1e-3, "lr_end": None,
               "lr_warm_up_steps": 2, "train_tokens": 4096 if args.tiny else 409600,
               "batch_size": 512 if args.tiny else 4096}
    _, stats = train_sae(acts.float(), sae_cfg, seed=0, device="cuda" if torch.cuda.is_available() else "cpu")
    emit(figure="sae_training_tokens_per_s", value=stats["tokens_per_s"], steps=stats["steps"],
         d_sae=stats["settings"]["d_sae"], k=stats["settings"]["k"], batch=sae_cfg["batch_size"])

    from mmie.arms import unlearn
    from mmie.arms.lora_adapter import LoraAdapter

    model = model.float() if dtype != "bfloat16" else model
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = LoraAdapter.create(model, {"rank": 8, "alpha": 16, "dropout": 0.0,
                                         "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    seqs = [tok(t, add_special_tokens=False)["input_ids"][:64] for t in texts]
    cfg = {"objective": "npo", "beta": 0.1, "bound": 10.0, "retain_kl": 1.0, "retain_nll": 1.0, "lr": 1e-4,
           "weight_decay": 0.0, "max_steps": 3 if args.tiny else 20, "warmup_steps": 1, "batch_size": 4 if args.tiny else 16,
           "grad_clip": 1.0, "eval_every": 1000, "max_retain_ppl_ratio": 1e9, "max_length": 64, "heldout_items": 8}
    res = unlearn.train(adapter.model, adapter, tok.pad_token_id, seqs[:100], seqs[100:200], seqs[200:208],
                        seqs[208:216], cfg, seed=0, desc="bench lora")
    emit(figure="lora_training_tokens_per_s", value=res.summary["tokens_per_second"], steps=cfg["max_steps"],
         batch=cfg["batch_size"], dtype=dtype)


if __name__ == "__main__":
    main()
