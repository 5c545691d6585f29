"""Residual-stream edits (SAE gate, ablation, steering, LEACE eraser), the activation cache and
layer selection (docs/method.md §6–7)."""

import copy

import numpy as np
import pytest
import torch

from mmie.arms.edit_arms import EditAdapter
from mmie.arms.fingerprint import model_fingerprint
from mmie.errors import ConfigError, DataError
from mmie.model.hooks import edit_layer_outputs, hook_count, record_layer_outputs
from mmie.sae import edits, layers
from mmie.sae.activations import cache_roles, collect, gibberish_from, read_cache, write_cache
from mmie.sae.directions import fit_leace, mean_difference


def _sae(d_in: int, d_sae: int = 64, k: int = 4, seed: int = 0):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu"))


def _batch(tok, texts):
    from mmie.model.likelihood import right_pad

    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return right_pad(seqs, tok.pad_token_id, "cpu")


@pytest.fixture()
def lm(tiny_lm):
    model, tok = tiny_lm
    ids, mask = _batch(tok, ["मेरा नाम राम है", "the cat sat on the mat today"])
    with torch.inference_mode():
        clean = model(input_ids=ids, attention_mask=mask).logits
    return model, tok, ids, mask, clean


def _edit_factories(d: int):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(d, generator=g)
    x0, x1 = torch.randn(50, d, generator=g), torch.randn(50, d, generator=g) + 1.0
    leace = fit_leace(x0, x1)
    codec = edits.SaeCodec(_sae(d))
    return {
        "sae_gate": lambda: edits.sae_gate(codec, list(range(64)), alpha=1.0),
        "sae_gate_clamp": lambda: edits.sae_gate(codec, list(range(64)), mode="clamp", clamp=2.0),
        "ablate": lambda: edits.ablate(v),
        "steer": lambda: edits.steer(v, 2.0),
        "erase": lambda: edits.erase(leace["mean"], leace["a"], leace["b"]),
    }


@pytest.mark.parametrize("kind", ["sae_gate", "sae_gate_clamp", "ablate", "steer", "erase", "record"])
def test_every_hook_type_is_removed_when_the_block_raises(lm, kind):
    model, tok, ids, mask, clean = lm
    d = model.config.hidden_size
    with pytest.raises(RuntimeError, match="boom"):
        if kind == "record":
            with record_layer_outputs(model, [0, 1]) as store:
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask)
                assert set(store) == {0, 1}
                raise RuntimeError("boom")
        else:
            with edit_layer_outputs(model, {1: _edit_factories(d)[kind]()}):
                with torch.inference_mode():
                    edited = model(input_ids=ids, attention_mask=mask).logits
                assert not torch.allclose(edited, clean), f"{kind} did not change the outputs"
                raise RuntimeError("boom")
    assert hook_count(model) == 0
    with torch.inference_mode():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(after, clean)


def test_edit_adapter_with_inner_adapter_removes_everything_on_error(lm):
    from mmie.arms.lora_adapter import LoraAdapter

    model, tok, ids, mask, clean = lm
    model = copy.deepcopy(model)
    adapter = LoraAdapter.create(model, {"rank": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
    with torch.no_grad():
        for n, p in adapter.model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    arm = EditAdapter(adapter.model, {0: edits.steer(torch.ones(model.config.hidden_size))}, inner=adapter,
                      skip_prefix=[])
    with pytest.raises(RuntimeError), arm.active():
        raise RuntimeError("inside")
    assert hook_count(adapter.model) == 0
    with arm.reference(), torch.inference_mode():
        ref = adapter.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ref, clean, atol=1e-6)


def test_gate_with_alpha_zero_leaves_outputs_unchanged(lm):
    model, tok, ids, mask, clean = lm
    codec = edits.SaeCodec(_sae(model.config.hidden_size))
    with edit_layer_outputs(model, {0: edits.sae_gate(codec, [1, 2, 3], alpha=0.0)}), torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(out, clean)


def test_gate_adds_only_the_change_never_the_reconstruction_error():
    d = 16
    sae = _sae(d, d_sae=32, k=4)
    codec = edits.SaeCodec(sae)
    h = torch.randn(3, 7, d) * 3
    z = sae.encode(h)
    dead = [i for i in range(32) if not (z[..., i] > 0).any()]
    live = [i for i in range(32) if (z[..., i] > 0).any()][:3]
    assert dead, "test needs a latent that never fires"
    # features that never fire: exactly the input (the reconstruction error, large for a random SAE, never enters)
    assert torch.equal(edits.sae_gate(codec, dead, alpha=1.0)(h), h)
    recon_err = (sae.decode(z) - h).norm()
    assert recon_err > 1.0
    # alpha=1 on live features removes exactly their decoded contribution
    out = edits.sae_gate(codec, live, alpha=1.0)(h)
    expected = h - z[..., live] @ sae.W_dec[live]
    assert torch.allclose(out, expected, atol=1e-5)
    half = edits.sae_gate(codec, live, alpha=0.5)(h)
    assert torch.allclose(half - h, (out - h) / 2, atol=1e-5)
    # clamp: active selected latents set to -c
    c = edits.sae_gate(codec, live, mode="clamp", clamp=1.5)(h)
    zs = z[..., live]
    assert torch.allclose(c, h + (torch.where(zs > 0, -1.5 - zs, 0 * zs)) @ sae.W_dec[live], atol=1e-5)


def test_gate_is_stateless_between_calls():
    sae = _sae(16, d_sae=32)
    gate = edits.sae_gate(edits.SaeCodec(sae), [0, 1, 2, 3], alpha=0.7)
    a, b = torch.randn(2, 5, 16), torch.randn(4, 3, 16)
    first = gate(a)
    gate(b)
    assert torch.equal(gate(a), first)


def test_edits_move_their_tensors_to_the_hidden_states_device():
    """A second device (PyTorch's meta device) stands in for another GPU: without the moves each
    edit raises "Tensor on device cpu is not on the expected device meta"."""
    d = 8
    hidden = torch.randn(2, 3, d, device="meta")
    x0, x1 = torch.randn(20, d), torch.randn(20, d) + 1
    le = fit_leace(x0, x1)
    for fn in (edits.ablate(torch.randn(d)), edits.steer(torch.randn(d)), edits.erase(le["mean"], le["a"], le["b"])):
        assert fn(hidden).device.type == "meta"
    sae = copy.deepcopy(_sae(d, d_sae=16, k=2))
    out = edits.sae_gate(edits.SaeCodec(sae), [0, 1], alpha=1.0)(hidden)
    assert out.device.type == "meta" and sae.W_dec.device.type == "meta"
    # the CPU copy of a constant is kept for CPU hidden states (no state from the meta call leaks)
    steer = edits.steer(torch.ones(d))
    assert steer(hidden).device.type == "meta"
    assert torch.equal(steer(torch.zeros(1, d)), -torch.ones(1, d))


def test_gate_dtype_follows_the_hidden_state():
    sae = _sae(8, d_sae=16, k=2)
    h = torch.randn(2, 3, 8, dtype=torch.float64)
    assert edits.sae_gate(edits.SaeCodec(sae), [0, 1, 2], alpha=1.0)(h).dtype == torch.float64


def test_gate_rejects_no_features_and_bad_indices():
    codec = edits.SaeCodec(_sae(8, d_sae=16))
    with pytest.raises(ConfigError, match="at least one feature"):
        edits.sae_gate(codec, [])
    with pytest.raises(ConfigError, match="outside"):
        edits.sae_gate(codec, [16])


def test_ablate_removes_the_direction_and_leace_equalises_class_means():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(12, generator=g)
    h = torch.randn(4, 12, generator=g)
    out = edits.ablate(v)(h)
    assert torch.allclose(out @ (v / v.norm()), torch.zeros(4), atol=1e-5)
    cov = torch.randn(12, 12, generator=g)
    x0 = torch.randn(300, 12, generator=g) @ cov
    x1 = torch.randn(300, 12, generator=g) @ cov + torch.linspace(-2, 2, 12)
    le = fit_leace(x0, x1)
    eraser = edits.erase(le["mean"], le["a"], le["b"])
    gap_before = (x1.mean(0) - x0.mean(0)).norm()
    gap_after = (eraser(x1).mean(0) - eraser(x0).mean(0)).norm()
    assert gap_before > 1 and gap_after < 1e-3 * gap_before
    # a rank-one edit: the part of the input orthogonal to b is untouched
    assert torch.linalg.matrix_rank(eraser(torch.eye(12)) - torch.eye(12), atol=1e-4) == 1
    with pytest.raises(DataError, match="same mean"):
        fit_leace(x0, x0.clone())
    assert torch.allclose(mean_difference(x1, x0), x1.mean(0) - x0.mean(0), atol=1e-5)


# ----------------------------------------------------------------------------- where edits act
def _left_padded_with_bos(tok, texts):
    """Left-padded ids with a BOS in front of every text (the demo tokenizer has none: its EOS
    stands in, as in GPT-2), and the attention mask."""
    from mmie.model.generation import _left_pad

    bos = tok.eos_token_id
    return _left_pad([[bos] + tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id, "cpu")


def test_fitted_positions_skip_padding_and_the_prefix_also_in_cached_steps():
    from mmie.model.hooks import fitted_positions

    ids = torch.tensor([[9, 9, 5, 7, 8], [5, 6, 7, 8, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert fitted_positions(ids, mask, [5]).tolist() == [[False, False, False, True, True],
                                                         [False, True, True, True, True]]
    assert fitted_positions(ids, mask, []).tolist() == mask.bool().tolist()
    # a prefix id later in the text is text, not the prefix
    assert fitted_positions(torch.tensor([[5, 5, 5]]), None, [5]).tolist() == [[False, True, True]]
    # cached step: one new token per row, the mask covers the whole sequence so far
    step = torch.tensor([[5], [7]])
    assert fitted_positions(step, torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), [5]).tolist() == [[True], [True]]
    assert fitted_positions(step, None, [5], past=5).tolist() == [[True], [True]]
    assert fitted_positions(step, None, [5], past=0).tolist() == [[False], [True]]


@pytest.mark.parametrize("kind", ["sae_gate", "steer", "erase"])
def test_edits_leave_the_special_prefix_and_padding_bit_identical(tiny_lm, kind):
    """The activation cache leaves out padding and the special prefix, so the edits fitted on it
    leave those positions alone (left padding, a BOS in front); every text position is edited."""
    model, tok = tiny_lm
    ids, mask = _left_padded_with_bos(tok, ["मेरा नाम राम है", "the cat sat on the mat today and", "a"])
    bos = tok.eos_token_id
    text = mask.bool() & (ids != bos)
    assert (~text & mask.bool()).sum() == 3 and (~mask.bool()).sum() > 0   # three BOS, some padding
    edit = _edit_factories(model.config.hidden_size)[kind]()
    with torch.inference_mode():
        with record_layer_outputs(model, [1]) as store:
            clean_logits = model(input_ids=ids, attention_mask=mask).logits
            clean = store[1].clone()
        with edit_layer_outputs(model, {1: edit}, skip_prefix=[bos]), record_layer_outputs(model, [1]) as store:
            model(input_ids=ids, attention_mask=mask)
            edited = store[1].clone()
        with edit_layer_outputs(model, {0: edit}, skip_prefix=[bos]):
            logits0 = model(input_ids=ids, attention_mask=mask).logits
        with edit_layer_outputs(model, {1: edit}), record_layer_outputs(model, [1]) as store:
            model(input_ids=ids, attention_mask=mask)
            everywhere = store[1].clone()
    assert torch.equal(edited[~text], clean[~text])
    changed = (edited - clean).abs().amax(-1) > 0
    assert changed[text].any() if kind == "sae_gate" else changed[text].all()
    assert not torch.equal(everywhere[~text], clean[~text])      # without skip_prefix they would change
    # an edit at layer 0 does not reach the BOS's prediction either (it attends only to itself)
    first = mask.argmax(1)
    rows = torch.arange(len(ids))
    assert torch.equal(logits0[rows, first], clean_logits[rows, first])
    assert hook_count(model) == 0


def test_edited_generation_with_cache_equals_without(tiny_lm):
    """In cached generation steps the new token's position is read from the end of the attention
    mask: generating with the key-value cache gives the scores of recomputing every step."""
    model, tok = tiny_lm
    ids, mask = _left_padded_with_bos(tok, ["मेरा नाम", "The weather today is", "हम"])
    edit = edits.steer(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5)), 0.3)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id, temperature=None,
              top_p=None, top_k=None, output_scores=True, return_dict_in_generate=True)

    def scores(**extra):
        out = model.generate(input_ids=ids, attention_mask=mask, **kw, **extra)
        return torch.stack(out.scores, 1)

    with torch.inference_mode():
        clean = scores()
        with edit_layer_outputs(model, {1: edit}, skip_prefix=[tok.eos_token_id]):
            cached = scores(use_cache=True)
            recomputed = scores(use_cache=False)
    assert torch.allclose(cached, recomputed, atol=1e-4)
    assert not torch.allclose(cached, clean, atol=1e-2)


# ----------------------------------------------------------------------------- activation cache
def test_collect_masks_padding_and_the_special_prefix(tiny_lm):
    model, tok = tiny_lm
    short, long = "राम घर गया", "the quick brown fox jumps over the lazy dog again and again"
    alone = collect(model, tok, [short], [1], max_length=64, batch_size=1)[1]
    batched = collect(model, tok, [long, short], [1], max_length=64, batch_size=2)[1]
    n_short = len(tok(short, add_special_tokens=False)["input_ids"])
    assert alone[0].shape[0] == n_short
    got = batched[0][batched[1] == 1]
    assert torch.allclose(got, alone[0], atol=1e-5)   # padding never enters the cached activations
    pooled = collect(model, tok, [long, short], [1], max_length=64, batch_size=2, pooled=True)[1]
    assert torch.allclose(pooled[0][1], alone[0].mean(0), atol=1e-5)
    assert hook_count(model) == 0


def test_cache_round_trip_and_mismatches(tmp_path, tiny_lm):
    model, tok = tiny_lm
    fp = model_fingerprint(model)
    acts = {"forget": (torch.randn(10, 32), torch.arange(10) // 3), "retain": (torch.randn(4, 32), torch.zeros(4))}
    path = tmp_path / "layer1.safetensors"
    write_cache(path, 1, acts, fp)
    c = read_cache(path, layer=1, fingerprint=fp, d_in=32)
    assert torch.equal(c.acts["forget"], acts["forget"][0]) and c.tokens() == 14 and c.layer == 1
    with pytest.raises(ConfigError, match="layer 1 != 2"):
        read_cache(path, layer=2)
    with pytest.raises(ConfigError, match="fingerprint"):
        read_cache(path, fingerprint="0" * 16)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot be read"):
        read_cache(path)


def test_model_fingerprint_tracks_weights_not_folders(tiny_lm):
    from mmie.arms.lora_adapter import LoraAdapter

    model, _ = tiny_lm
    fp = model_fingerprint(model)
    other = copy.deepcopy(model)
    assert model_fingerprint(other) == fp
    adapter = LoraAdapter.create(other, {"rank": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_proj"]})
    assert model_fingerprint(adapter.model) == fp   # the adapter's own weights are not the model's
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.get_input_embeddings().weight[0, 0] += 1.0
    assert model_fingerprint(changed) != fp


def test_cache_roles_and_gibberish(tmp_path):
    from mmie import io
    from mmie.jobs import read_declared_split

    data = tmp_path / "data"
    io.write_jsonl(data / "forget" / "train.jsonl", [{"id": "a", "text": "मेरा नाम राम है"}])
    io.write_jsonl(data / "retain" / "train.jsonl", [{"id": "b", "text": "my name is Ram"}])
    io.write_jsonl(data / "neighbours" / "ur" / "train.jsonl", [{"id": "c", "text": "میرا نام رام ہے"}])
    cfg = {"lid": {"romanization": "iast_plain"}, "data": {"gibberish": None, "seed": 1},
           "languages": {"target": {"code": "hi", "script": "devanagari"}, "neighbours": {"ur": {}}}}
    files = {(r, "train"): str(p / "train.jsonl") for r, p in (
        ("forget", data / "forget"), ("retain", data / "retain"), ("neighbour_ur", data / "neighbours" / "ur"))}
    roles = cache_roles(cfg, lambda role: read_declared_split(files, role, "train", "cache_activations"), 10)
    assert set(roles) == {"forget", "forget_romanized", "gibberish", "retain", "neighbour_ur"}
    assert roles["forget_romanized"][0].isascii()
    g = roles["gibberish"][0]
    assert sorted(g.replace(" ", "")) == sorted("मेरा नाम राम है".replace(" ", "")) and g == gibberish_from(roles["forget"], 1)[0]


# ----------------------------------------------------------------------------- layer selection
def test_probe_auc_separates_planted_classes_and_not_noise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    assert layers.probe_auc(a + 2.0, b, 4, 0) > 0.95
    assert 0.2 < layers.probe_auc(a, b, 4, 0) < 0.8


def _selection_config(**sel):
    return {"layers": {"selection": {"candidates": None, "n_layers": 1, "resamples": 2, "sample_fraction": 0.5,
                                     "cv_folds": 2, "causal_prompts": 4, "causal_max_new_tokens": 4,
                                     "probe_weight": 0.5, "causal_weight": 0.5, "stability_floor": 0.6,
                                     "tie_tolerance": 1e-9, "judge_weight": 0, **sel},
                       "activations": {"max_length": 32, "batch_size": 4}},
            "generation": {"max_new_tokens": 4, "min_new_tokens": 4}, "data": {"seed": 1}}


def test_selection_artifact_on_a_tiny_model(tiny_lm, demo_texts):
    from types import SimpleNamespace

    model, tok = tiny_lm
    lm = SimpleNamespace(model=model, tokenizer=tok)
    data = {"target": demo_texts["hi"][:8], "retain": demo_texts["en"][:8], "neighbours": demo_texts["ur"][:8]}
    res = layers.select(_selection_config(), lm, data)
    assert res["candidates"] == [0, 1] and len(res["resamples"]) == 2
    assert all(set(r) == {"0", "1"} for r in res["resamples"])
    assert sum(res["votes"].values()) == 2 and res["layers"][0] in (0, 1)
    assert sum(res["frequency"].values()) == pytest.approx(1.0) and isinstance(res["stable"], bool)
    for per in res["resamples"]:
        for row in per.values():
            assert row["causal"] == pytest.approx(row["mass_lost_target"] - row["mass_lost_retain"])
    # each resample draws its own halves of the dev texts: fit and held halves are disjoint
    for draw in res["resample_draws"]:
        assert not set(draw["fit"]["target"]) & set(draw["held"]["target"])
    assert res["resample_draws"][0] != res["resample_draws"][1]
    assert hook_count(model) == 0
    with pytest.raises(ConfigError, match="judge"):
        layers.select(_selection_config(judge_weight=1.0), lm, data)
    with pytest.raises(ConfigError, match="n_layers"):
        layers.select(_selection_config(n_layers=3), lm, data)


def test_force_layers_bypasses_selection_without_loading_a_model(tmp_path, monkeypatch):
    import mmie.model.loading
    from mmie import io
    from mmie.jobs import sae as sae_job

    def no_model(*a, **k):
        raise AssertionError("force_layers must not load a model")

    monkeypatch.setattr(mmie.model.loading, "load_model", no_model)
    cfg = {"layers": {"force_layers": [1, 3]}, "data": {"seed": 1}, "experiment": "x"}
    out = tmp_path / "selection.json"
    sae_job.select_layers(cfg, None, [], str(out))
    sel = io.read_json(out)
    assert sel["forced"] is True and sel["layers"] == [1, 3] and sel["resamples"] == [] and "provenance" in sel
