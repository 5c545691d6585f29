import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "data" / "demo"


def write_lines(path: Path, lines: list, raw: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw:
        path.write_bytes(b"".join(lines))
    else:
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def demo_config():
    from mmie.config import load

    return load(ROOT / "config.yaml")


@pytest.fixture(scope="session")
def demo_texts():
    def read(name):
        return [json.loads(line)["text"] for line in (DEMO / name).read_text(encoding="utf-8").splitlines() if line]
    return {"hi": read("forget_hi.jsonl"), "en": read("retain_en.jsonl"), "ur": read("neighbours/ur.jsonl"),
            "pa": read("neighbours/pa.jsonl"), "bn": read("neighbours/bn.jsonl")}


@pytest.fixture(scope="session")
def tiny_lm(demo_texts):
    """A tiny random Qwen2 with a BPE tokenizer trained on part of the demo corpus (seconds on a CPU)."""
    import torch

    from mmie.demo_model import build_model, train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(demo_texts["hi"][:150] + demo_texts["en"][:150], vocab_size=400, max_length=128)
    cfg = {"hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate_size": 64, "max_position": 128}
    model = build_model(cfg, tok).eval()
    return model, tok
