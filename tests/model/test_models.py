"""Model loading: attention fallback on the actual failure, recorded (reliability row 9)."""
import pytest

from mmie.errors import ConfigError, ModelError
from mmie.model import loading as models

CFG = {"source": "local", "path": None, "dtype": "auto", "attn_implementation": "auto", "quantization": "none",
       "device": "cpu", "device_map": None, "offline": True}


@pytest.fixture()
def saved_tiny(tiny_lm, tmp_path):
    model, tok = tiny_lm
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_loads_through_the_common_loader_and_records_runtime(saved_tiny):
    lm = models.load_model({**CFG, "path": str(saved_tiny)})
    assert lm.runtime["dtype"] == "float32" and lm.runtime["device"] == "cpu"
    assert lm.runtime["attn_implementation"] == "sdpa"
    assert lm.tokenizer.padding_side == "left"


def test_flash_attention_import_failure_is_not_tried_on_cpu(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    assert models.attention_candidates("auto", "cuda") == ["sdpa", "eager"]
    assert models.attention_candidates("auto", "cpu") == ["sdpa", "eager"]
    assert models.attention_candidates("flash_attention_2", "cuda") == ["flash_attention_2", "sdpa", "eager"]


def test_load_failure_falls_back_and_is_recorded(saved_tiny, monkeypatch):
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained

    def fake(*args, attn_implementation=None, **kwargs):
        if attn_implementation in ("flash_attention_2", "sdpa"):
            raise ImportError(f"{attn_implementation} unavailable (simulated)")
        return real(*args, attn_implementation=attn_implementation, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(models, "resolve_device", lambda requested: "cuda")
    monkeypatch.setattr(models, "resolve_dtype", lambda requested, device: __import__("torch").float32)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    lm = models.load_model({**CFG, "path": str(saved_tiny), "device_map": "cpu"})
    attempts = lm.runtime["attention_attempts"]
    assert [a["attn_implementation"] for a in attempts] == ["flash_attention_2", "sdpa", "eager"]
    assert "simulated" in attempts[0]["error"] and attempts[-1]["error"] is None
    assert lm.runtime["attn_implementation"] == "eager"


def test_source_errors():
    with pytest.raises(ConfigError, match="revision"):
        models.model_source({"source": "hub", "id": "Qwen/Qwen2.5-1.5B-Instruct", "revision": None}, None)
    with pytest.raises(ModelError, match="config.json"):
        models.model_source({"source": "local", "path": "/nonexistent"}, None)
    with pytest.raises(ConfigError, match="attn_implementation"):
        models.attention_candidates("magic", "cpu")


def test_saved_tokenizer_round_trips_exactly(tiny_lm, saved_tiny):
    """transformers 5 would rebuild a from-scratch Qwen2 tokenizer with Qwen's own split regex; the
    loader must give back the tokens the model was trained on."""
    _, tok = tiny_lm
    lm = models.load_model({**CFG, "path": str(saved_tiny)})
    for text in ("मेरी छोटी बहन हर चीज़ में रुचि लेती है।", "The weather is nice."):
        assert lm.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    assert lm.runtime["tokenizer"]["reloaded_from_tokenizer_json"] is True
