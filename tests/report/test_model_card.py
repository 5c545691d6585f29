"""The checkpoint model card (mmie.report.model_card) from a manifest: Hub metadata and loading code
that fit the adapter's format and the base model's source."""
import yaml

from mmie.report.model_card import render

MANIFEST = {
    "arm": "reft", "seed": 2, "method": "reft", "layers": [3],
    "spec": {"method": "reft", "rank": 4, "intervention": "loreft", "train": {"lr": 0.01}},
    "trainable_parameters": 123, "train_texts": {"forget": 10, "retain": 10},
    "summary": {"kept_step": 5, "steps_run": 10, "stopped": "retain_ppl", "base_retain_ppl": 20.0, "base_forget_nll": 3.0},
    "provenance": {"config_hash": "abc123", "seed": 2, "git": {"commit": "f00d", "dirty": True},
                   "data_hashes": {"data/forget/train.jsonl": "d1" * 32},
                   "texts_used": {"groups": {"forget/train": {"count": 10, "sha256": []}}},
                   "runtime": {"model": "org/base", "dtype": "bfloat16"}, "device": {"device": "cuda:0"}},
}


def meta(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_hub_base_model_is_named_with_its_revision_and_loads_with_it():
    card = render(MANIFEST, {"source": "hub", "id": "org/base", "revision": "0" * 40}, peft=False)
    assert meta(card) == {"base_model": "org/base", "tags": ["mmie", "machine-unlearning", "language-unlearning", "reft"]}
    assert f'from_pretrained("org/base", revision="{"0" * 40}")' in card and "pyreft.LoreftIntervention" in card
    assert "(uncommitted changes)" in card and "layers: [3]" in card and "d1" * 32 in card
    assert "forget/train: 10 texts" in card and "stopped: retain_ppl" in card


def test_a_peft_adapter_says_so_and_a_local_base_is_not_hub_metadata():
    card = render(MANIFEST, {"source": "local", "path": "models/base"}, peft=True)
    assert meta(card)["library_name"] == "peft" and "base_model" not in meta(card)
    assert "the local model folder `models/base`" in card and "PeftModel.from_pretrained" in card


def test_plain_pyreft_code_of_the_card_reproduces_mmies_reft_logits(tiny_lm, tmp_path):
    """The card's loader (pyreft, safetensors, transformers; no mmie) on a saved ReFT folder gives the
    logits mmie's ReftAdapter gives with the adapter on."""
    import copy
    import re

    import torch

    from mmie.arms.reft_adapter import ReftAdapter

    model, tok = tiny_lm
    base_dir, folder = tmp_path / "base", tmp_path / "reft"
    model.save_pretrained(str(base_dir))
    folder.mkdir()
    torch.manual_seed(0)
    adapter = ReftAdapter(copy.deepcopy(model), [0, 1], rank=2, kind="loreft")
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.3 * torch.randn_like(p))      # away from the start, so the check sees the intervention
    adapter.save(folder)
    ids = torch.tensor([tok("मेरा नाम राम है and the cat", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        with adapter.active():
            want = adapter.model(input_ids=ids).logits
        plain = adapter.model(input_ids=ids).logits
    card = render(MANIFEST, {"source": "local", "path": str(base_dir)}, peft=False)
    code = re.search(r"```python\n(.*?)```", card.split("## Load it")[1], re.S).group(1)
    code = code.replace('"<the base model folder>"', repr(str(base_dir))).replace('"<this folder>"', repr(str(folder)))
    assert "mmie" not in code
    scope: dict = {}
    exec(compile(code, "model-card", "exec"), scope)
    with torch.no_grad():
        got = scope["model"](input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3            # the intervention changes the outputs
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
