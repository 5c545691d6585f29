"""SAE training, checkpoints, quality and feature selection (docs/method.md §7) on synthetic activations and
the tiny model."""

import copy
import json

import pytest
import torch

from mmie.errors import DataError, SAEError

SAE_CFG = {"expansion": 4, "k": 4, "lr": 0.003, "lr_end": None, "lr_warm_up_steps": 5, "train_tokens": 40_000,
           "batch_size": 256, "holdout_fraction": 0.1, "quality_texts": 8, "device": "cpu"}
FEAT_CFG = {"method": "frequency", "n_features": 4, "retain_max_freq": 0.01, "min_forget_freq": 0.05,
            "gibberish_max_freq": 0.05, "gradient_texts": 16}


def sparse_data(n: int, d: int = 16, m: int = 24, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Tokens made of `active` of `m` fixed unit directions with positive weights, plus noise."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=-1)
    idx = torch.rand(n, m, generator=g).argsort(-1)[:, :active]
    codes = torch.zeros(n, m).scatter_(1, idx, 1 + 2 * torch.rand(n, active, generator=g))
    return codes @ dirs + 0.01 * torch.randn(n, d, generator=g)


@pytest.fixture(scope="module")
def data():
    acts = sparse_data(6000)
    return acts[:5000], acts[5000:]


@pytest.fixture(scope="module")
def trained(data):
    from mmie.sae.autoencoder import train_sae

    return train_sae(data[0], SAE_CFG, seed=0, device="cpu")


def inference_sae(w_enc, b_enc, w_dec, b_dec, k):
    """A sae-lens inference TopK SAE with the given weights."""
    from sae_lens import TopKSAE, TopKSAEConfig

    d_in, d_sae = w_enc.shape
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu"))
    sae.load_state_dict({"W_enc": w_enc.float(), "b_enc": b_enc.float(), "W_dec": w_dec.float(),
                         "b_dec": b_dec.float()})
    return sae.eval()


def exact_sae(d: int):
    """Latent i fires with x_i when x_i > 0, latent d + i with −x_i when x_i < 0: with k = d the
    reconstruction is exact."""
    eye = torch.eye(d)
    return inference_sae(torch.cat([eye, -eye], 1), torch.zeros(2 * d), torch.cat([eye, -eye], 0), torch.zeros(d), d)


# ----------------------------------------------------------------------------- training
def test_training_reduces_fvu_and_is_deterministic(data, trained):
    from mmie.sae.autoencoder import quality, train_sae

    sae, stats = trained
    held = data[1]
    q = quality(sae, held)
    assert q["fvu"] < 0.25, q
    assert q["l0"] <= SAE_CFG["k"] and q["tokens"] == len(held)
    assert stats["steps"] == 157 and stats["tokens"] == 157 * 256 and stats["tokens_per_s"] > 0
    assert stats["settings"]["lr_end"] == pytest.approx(SAE_CFG["lr"] / 10)
    fresh = exact_sae(16)
    with torch.no_grad():
        fresh.W_dec.mul_(0.0)
    assert quality(fresh, held)["fvu"] > 0.9  # the reference point: reconstructing nothing
    again, stats2 = train_sae(data[0], SAE_CFG, seed=0, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), again.state_dict().values(), strict=True))
    assert stats2["final_mse"] == stats["final_mse"]
    other, _ = train_sae(data[0], SAE_CFG, seed=1, device="cpu")
    assert not torch.equal(other.W_dec, sae.W_dec)


def test_training_config_errors(data):
    from mmie.errors import ConfigError
    from mmie.sae.autoencoder import train_sae

    with pytest.raises(ConfigError, match="lr_warm_up_steps"):
        train_sae(data[0], {**SAE_CFG, "train_tokens": 512}, seed=0, device="cpu")
    with pytest.raises(ConfigError, match="sae.k"):
        train_sae(data[0], {**SAE_CFG, "k": 1000}, seed=0, device="cpu")
    bad = data[0].clone()
    bad[3, 2] = float("nan")
    with pytest.raises(Exception, match="non-finite"):
        train_sae(bad, SAE_CFG, seed=0, device="cpu")


def test_divergence_names_the_step(data):
    from mmie.sae.autoencoder import train_sae

    with pytest.raises(SAEError, match=r"non-finite loss .* at step \d+ of"):
        train_sae(data[0] * 1e30, {**SAE_CFG, "lr": 1e30}, seed=0, device="cpu")


# ----------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path, data, trained):
    from sae_lens import SAE

    from mmie.sae.autoencoder import load_sae, save_sae

    sae, stats = trained
    out = tmp_path / "sae" / "layer3"
    save_sae(sae, out, {"layer": 3, "model_fingerprint": "abc", "training": stats, "provenance": {"rule": "t"}})
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "mmie.json", "sae_weights.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["layer3"]  # no temporary folder left
    meta = json.loads((out / "mmie.json").read_text())
    assert (meta["layer"], meta["d_in"], meta["d_sae"], meta["k"]) == (3, 16, 64, 4)
    x = data[1][:50]
    loaded = load_sae(out, layer=3, model_fingerprint="abc", d_in=16)
    plain = SAE.load_from_disk(str(out))
    with torch.no_grad():
        want_z, want_x = sae.encode(x), sae(x)
        for other in (loaded, plain):
            assert torch.equal(other.encode(x) > 0, want_z > 0)
            torch.testing.assert_close(other.encode(x), want_z, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(other(x), want_x, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(64))  # unit-norm decoder rows
    save_sae(sae, out, {"layer": 3, "model_fingerprint": "abc"})  # overwriting an existing checkpoint works
    assert [p.name for p in out.parent.iterdir()] == ["layer3"]


def test_load_errors(tmp_path, trained):
    from mmie.sae.autoencoder import load_sae, save_sae

    sae, _ = trained
    out = tmp_path / "layer3"
    with pytest.raises(SAEError, match="does not exist; run train_sae"):
        load_sae(out, layer=3, model_fingerprint="abc", d_in=16)
    save_sae(sae, out, {"layer": 3, "model_fingerprint": "abc"})
    with pytest.raises(SAEError, match="layer: expected 4, found 3"):
        load_sae(out, layer=4, model_fingerprint="abc", d_in=16)
    with pytest.raises(SAEError, match="model fingerprint: expected xyz, found abc"):
        load_sae(out, layer=3, model_fingerprint="xyz", d_in=16)
    with pytest.raises(SAEError, match="d_in: expected 32, found 16"):
        load_sae(out, layer=3, model_fingerprint="abc", d_in=32)
    weights = out / "sae_weights.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SAEError, match="corrupt.*delete the folder and rerun train_sae"):
        load_sae(out, layer=3, model_fingerprint="abc", d_in=16)
    # without the recorded hashes, the truncated file is caught where safetensors reads it
    meta = json.loads((out / "mmie.json").read_text())
    del meta["files"]
    (out / "mmie.json").write_text(json.dumps(meta))
    with pytest.raises(SAEError, match="cannot be loaded .*SafetensorError.*delete the folder and rerun train_sae"):
        load_sae(out, layer=3, model_fingerprint="abc", d_in=16)
    (out / "mmie.json").write_text("{not json")
    with pytest.raises(SAEError, match="mmie.json cannot be read"):
        load_sae(out, layer=3, model_fingerprint="abc", d_in=16)
    (out / "mmie.json").unlink()
    with pytest.raises(SAEError, match="mmie.json is missing"):
        load_sae(out, layer=3, model_fingerprint="abc", d_in=16)


# ----------------------------------------------------------------------------- quality
def test_quality_known_cases():
    from mmie.errors import MetricError
    from mmie.sae.autoencoder import quality

    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    x[:, 0] = x[:, 0].abs() + 0.1  # latent 4 (fires on x_0 < 0) is dead
    sae = exact_sae(4)
    q = quality(sae, x, batch_size=64)
    assert q["fvu"] < 1e-10 and q["mse"] < 1e-10
    assert q["l0"] == 4.0  # every coordinate is non-zero: exactly one of its two latents fires
    assert q["dead_share"] == pytest.approx(1 / 8)
    mean_only = inference_sae(torch.zeros(4, 8), torch.zeros(8), torch.zeros(8, 4), x.mean(0), 4)
    q0 = quality(mean_only, x)
    assert q0["fvu"] == pytest.approx(1.0, abs=1e-6) and q0["l0"] == 0 and q0["dead_share"] == 1.0
    with pytest.raises(MetricError, match="zero variance"):
        quality(sae, torch.ones(10, 4))


# ----------------------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def trained_lm(tiny_lm, demo_texts):
    """A copy of the tiny model trained a little (so that zeroing a layer's output hurts)."""
    from mmie.model.likelihood import right_pad
    from mmie.sae.activations import encode_texts

    model, tok = tiny_lm
    model = copy.deepcopy(model).train()
    texts = demo_texts["hi"][:48] + demo_texts["en"][:48]
    seqs, _ = encode_texts(tok, texts, 48)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        batch = [seqs[(step * 16 + i) % len(seqs)] for i in range(16)]
        ids, mask = right_pad(batch, tok.pad_token_id, "cpu")
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), tok


def test_loss_recovered(trained_lm, demo_texts):
    from mmie.model.hooks import hook_count
    from mmie.sae.activations import collect
    from mmie.sae.autoencoder import loss_recovered, train_sae

    model, tok = trained_lm
    texts = demo_texts["hi"][48:60] + demo_texts["en"][48:60]
    kw = {"max_length": 32, "batch_size": 8}
    exact = loss_recovered(model, tok, 0, exact_sae(32), texts, **kw)
    assert exact["ce_zero"] > exact["ce_clean"] + 0.5
    assert exact["ce_sae"] == pytest.approx(exact["ce_clean"], abs=1e-4)
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    nothing = inference_sae(torch.zeros(32, 8), torch.zeros(8), torch.zeros(8, 32), torch.zeros(32), 2)
    assert loss_recovered(model, tok, 0, nothing, texts, **kw)["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    acts, _ = collect(model, tok, demo_texts["hi"][:60] + demo_texts["en"][:60], [0], max_length=32, batch_size=16)[0]
    sae, _ = train_sae(acts, {**SAE_CFG, "expansion": 2, "k": 8, "train_tokens": 12_800}, seed=0, device="cpu")
    res = loss_recovered(model, tok, 0, sae, texts, **kw)
    assert res["ce_clean"] <= res["ce_sae"] <= res["ce_zero"]
    assert 0 < res["loss_recovered"] <= 1 and res["tokens"] == exact["tokens"]
    assert hook_count(model) == 0


def test_loss_recovered_keeps_the_prefix_clean(trained_lm, demo_texts):
    """With a special prefix, its positions never reach the SAE and predictions from it are not scored."""
    from mmie.sae.activations import encode_texts
    from mmie.sae.autoencoder import loss_recovered

    model, tok = trained_lm
    tok = copy.deepcopy(tok)
    tok._mmie_prefix = [tok.eos_token_id]  # as if the tokenizer prepended a BOS
    texts = demo_texts["hi"][60:66]
    seqs, skip = encode_texts(tok, texts, 24)
    assert skip == 1 and all(s[0] == tok.eos_token_id for s in seqs)
    sae = exact_sae(32)
    rows = []
    handle = sae.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        res = loss_recovered(model, tok, 0, sae, texts, max_length=24, batch_size=16)
    finally:
        handle.remove()
    width = max(len(s) for s in seqs)
    assert rows == [len(seqs) * (width - 1)]
    assert res["tokens"] == sum(len(s) - 2 for s in seqs)
    # zero-ablation spares the prefix position too
    from mmie.model.hooks import edit_layer_outputs
    from mmie.model.likelihood import right_pad

    ids, mask = right_pad(seqs, tok.pad_token_id, "cpu")
    with torch.no_grad(), edit_layer_outputs(model, {0: lambda h: torch.cat([h[:, :1], 0 * h[:, 1:]], 1)}):
        logits = model(input_ids=ids, attention_mask=mask).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    valid = mask[:, 1:].bool()
    valid[:, 0] = False
    assert res["ce_zero"] == pytest.approx(float(nll[valid].mean()), rel=1e-5)


def test_loss_recovered_undefined_is_an_error(trained_lm, demo_texts):
    """When zero-ablation does not raise the loss (forced here: every edit made a no-op) the ratio
    is undefined: an error, never a stand-in number."""
    from unittest import mock

    from mmie.errors import MetricError
    from mmie.model import hooks
    from mmie.sae.autoencoder import loss_recovered

    model, tok = trained_lm
    real = hooks.edit_layer_outputs

    def no_op(model_, edits):
        return real(model_, {layer: (lambda h: h) for layer in edits})

    with mock.patch("mmie.model.hooks.edit_layer_outputs", no_op), pytest.raises(MetricError, match="undefined.*ce_zero"):
        loss_recovered(model, tok, 0, exact_sae(32), demo_texts["en"][:4], max_length=16, batch_size=4)


# ----------------------------------------------------------------------------- feature selection
def planted_cache(seed: int = 0, pool: int = 0):
    """16-d activations whose coordinates are latents of an identity SAE (fires when x_i > 0.5):
    0 planted (forget + romanized only), 1 script decoy (forget + gibberish), 2 general (also
    retain/neighbours), 3 neighbour decoy (forget + Urdu), 4..15 background (every role); with
    ``pool``, the last ``pool`` latents instead fire on forget only, rarely (0.5 %: never chosen, but
    the random control's pool, so that the chosen latents can have a control)."""
    from mmie.sae.activations import Cache

    g = torch.Generator().manual_seed(seed)
    rates = {  # role -> {latent: share of tokens}
        "forget": {0: 0.5, 1: 0.8, 2: 0.9, 3: 0.6}, "forget_romanized": {0: 0.5, 2: 0.9},
        "gibberish": {1: 0.8}, "retain": {2: 0.3}, "neighbour_ur": {2: 0.3, 3: 0.2}, "neighbour_bn": {2: 0.3},
    }
    acts, doc = {}, {}
    n = 2000
    for role, latents in rates.items():
        x = 0.05 * torch.randn(n, 16, generator=g)
        x[torch.arange(n), 4 + torch.randint(0, 12 - pool, (n,), generator=g)] = 1.0
        for i in range(16 - pool, 16) if role == "forget" else ():
            x[torch.rand(n, generator=g) < 0.005, i] = 2.0
        for i, rate in latents.items():
            x[torch.rand(n, generator=g) < rate, i] = 2.0
        acts[role], doc[role] = x, torch.arange(n) // 20
    meta = {"layer": "3", "d_in": "16", "model_fingerprint": "f", "roles": json.dumps(sorted(acts)), "extra": {}}
    return Cache(acts=acts, doc=doc, meta=meta)


def identity_sae():
    return inference_sae(torch.eye(16), torch.full((16,), -0.5), torch.eye(16), torch.zeros(16), 4)


def test_frequency_and_semantic_find_the_planted_feature():
    from mmie.sae.features import select_features

    cache, sae = planted_cache(pool=2), identity_sae()
    freq = select_features("frequency", sae, cache, FEAT_CFG)
    assert [f["index"] for f in freq["features"]] == [1, 0]  # ranked by forget frequency; 2, 3 and 4..15 dropped
    assert freq["n_features"]["used"] == 2 and freq["control_pool"]["index"] == [14, 15]
    top = {f["index"]: f for f in freq["features"]}
    assert top[0]["freq_forget"] == pytest.approx(0.5, abs=0.05) and top[0]["freq_retain"] == 0
    assert top[0]["freq_neighbours"] == {"bn": 0.0, "ur": 0.0}
    assert freq["n_candidates"] == 2 and freq["layer"] == 3 and freq["method"] == "frequency"
    assert freq["rejected"]["fires_on_neighbour_ur (> retain_max_freq=0.01)"] == 12  # 2, 3 and the background
    sem = select_features("semantic", sae, cache, FEAT_CFG)
    assert [f["index"] for f in sem["features"]] == [0]  # the script decoy fires on gibberish, not romanized
    assert sem["features"][0]["score"] == pytest.approx(min(top[0]["freq_forget"], sem["features"][0]["freq_forget_romanized"]))
    assert sem["features"][0]["freq_gibberish"] == 0
    assert freq["alive"] == list(range(16))
    dead = identity_sae()
    with torch.no_grad():
        dead.b_enc[15] = -100.0
    assert select_features("frequency", dead, cache, FEAT_CFG)["alive"] == list(range(15))


def test_zero_selected_features_is_an_error():
    from mmie.sae.features import select_features

    with pytest.raises(SAEError, match=r"kept none of the 16 latents.*rare_on_forget.*features.min_forget_freq"):
        select_features("frequency", identity_sae(), planted_cache(), {**FEAT_CFG, "min_forget_freq": 0.95})
    cache = planted_cache()
    del cache.acts["gibberish"]
    with pytest.raises(Exception, match="lacks roles"):
        select_features("semantic", identity_sae(), cache, FEAT_CFG)


def test_gradient_finds_the_latent_that_drives_the_forget_loss(trained_lm, demo_texts):
    from mmie.model.hooks import edit_layer_outputs, hook_count
    from mmie.model.likelihood import right_pad
    from mmie.sae.activations import Cache, encode_texts
    from mmie.sae.features import select_features

    model, tok = trained_lm
    forget = demo_texts["hi"][100:116]
    # the direction that raises the forget loss most: the mean gradient at layer 0's output
    seqs, _ = encode_texts(tok, forget, 32)
    ids, mask = right_pad(seqs, tok.pad_token_id, "cpu")
    kept = []

    def grab(h):
        leaf = h.detach().requires_grad_(True)
        kept.append(leaf)
        return leaf

    with torch.enable_grad(), edit_layer_outputs(model, {0: grab}):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        (grad,) = torch.autograd.grad(loss, kept[0])
    u = torch.nn.functional.normalize(grad[mask.bool()].sum(0), dim=0)
    g = torch.Generator().manual_seed(0)
    d_sae = 24
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, 32, generator=g), dim=-1)
    w_dec[5], w_dec[9] = -u, u  # 5: its activity lowers the forget loss (planted); 9: raises it (decoy)
    w_enc = 0.05 * torch.randn(32, d_sae, generator=g)
    w_enc[:, 5] = w_enc[:, 9] = 0
    b_enc = torch.zeros(d_sae)
    b_enc[5] = b_enc[9] = 3.0  # both always active
    sae = inference_sae(w_enc, b_enc, w_dec, torch.zeros(32), 4)
    x = torch.randn(500, 32, generator=g)
    cache = Cache(acts={"forget": x, "retain": x[:250], "neighbour_ur": x[250:]},
                  doc={r: torch.zeros(1) for r in ("forget", "retain", "neighbour_ur")},
                  meta={"layer": "0", "d_in": "32", "model_fingerprint": "f"})
    # freeze a part of the model: the flags must come back as they were
    model.model.embed_tokens.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        loose = {**FEAT_CFG, "method": "gradient", "retain_max_freq": 1.0, "min_forget_freq": 0.0}
        res = select_features("gradient", sae, cache, loose, model=model, tok=tok, forget_texts=forget,
                              retain_texts=demo_texts["en"][100:108], max_length=32, batch_size=8)
        assert res["features"][0]["index"] == 5
        assert res["features"][0]["score"] > 2 * max(abs(f["score"]) for f in res["features"][1:])
        assert 9 not in [f["index"] for f in res["features"]]  # ablating it lowers the forget loss
        assert res["rejected"]["ablation_does_not_raise_forget_loss (score <= 0)"] >= 1
        assert "retain_score" in res["features"][0] and res["attribution_tokens_forget"] > 0
        # the retain filter applies: latents 5 and 9 fire on every retain token
        strict = {**loose, "retain_max_freq": 0.5}
        res2 = select_features("gradient", sae, cache, strict, model=model, tok=tok, forget_texts=forget,
                               max_length=32, batch_size=8)
        assert 5 not in [f["index"] for f in res2["features"]]
        # the model is untouched
        assert hook_count(model) == 0
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.model.embed_tokens.weight.requires_grad_(True)


# ----------------------------------------------------------------------------- held out by text
TEXT_ROLES = ("forget", "forget_romanized", "gibberish", "neighbour_ur", "retain")


def text_coded_cache(n_texts: int = 30, d: int = 8):
    """Every token of text t of role r carries the code r + t/100 in coordinate 0 (the rest is
    noise): the text a row came from can be read off the row. Texts have 5 to 14 tokens."""
    from mmie.sae.activations import Cache

    g = torch.Generator().manual_seed(0)
    acts, doc = {}, {}
    for r, role in enumerate(TEXT_ROLES):
        lengths = torch.randint(5, 15, (n_texts,), generator=g)
        doc[role] = torch.repeat_interleave(torch.arange(n_texts), lengths)
        x = torch.randn(len(doc[role]), d, generator=g)
        x[:, 0] = r + doc[role].float() / 100
        acts[role] = x
    meta = {"layer": "1", "d_in": str(d), "model_fingerprint": "f", "roles": json.dumps(sorted(acts)), "extra": {}}
    return Cache(acts=acts, doc=doc, meta=meta)


def text_codes(rows: torch.Tensor) -> set[int]:
    return {int(v) for v in torch.round(rows[:, 0] * 100).tolist()}


def test_holdout_is_whole_texts_and_seeded():
    from mmie.sae.holdout import draw_holdout_texts, split_holdout_tokens

    cache = text_coded_cache()
    roles = ["forget", "neighbour_ur", "retain"]
    held = draw_holdout_texts({r: cache.doc[r] for r in roles}, 0.1, seed=0)
    assert {r: len(t) for r, t in held.items()} == {r: 3 for r in roles}
    train, test = split_holdout_tokens(cache, roles, held)
    assert not text_codes(train) & text_codes(test)  # no text has tokens on both sides
    assert text_codes(test) == {100 * TEXT_ROLES.index(r) + t for r in roles for t in held[r]}
    assert len(train) + len(test) == sum(len(cache.acts[r]) for r in roles)
    assert draw_holdout_texts({r: cache.doc[r] for r in roles}, 0.1, seed=0) == held
    assert draw_holdout_texts({r: cache.doc[r] for r in roles}, 0.1, seed=1) != held
    with pytest.raises(Exception, match="role 'retain' has 1 text.*at least 2"):
        draw_holdout_texts({"retain": torch.zeros(5, dtype=torch.long)}, 0.1, seed=0)


def test_train_sae_job_never_trains_on_a_quality_text(tmp_path, demo_config, monkeypatch):
    """The rows the SAE trains on and the rows its quality is measured on come from disjoint texts,
    and mmie.json names the held-out ones."""
    from mmie.config import deep_update
    from mmie.jobs import sae as sae_jobs
    from mmie.sae import autoencoder as sae_mod
    from mmie.sae.activations import write_cache

    cache = text_coded_cache()
    path = tmp_path / "acts" / "layer1.safetensors"
    write_cache(path, 1, {r: (cache.acts[r], cache.doc[r]) for r in TEXT_ROLES}, "f")
    seen = {}
    fit, quality = sae_mod.train_sae, sae_mod.quality
    monkeypatch.setattr(sae_mod, "train_sae", lambda acts, *a, **k: (seen.setdefault("train", acts), fit(acts, *a, **k))[1])
    monkeypatch.setattr(sae_mod, "quality", lambda sae, acts, **k: (seen.setdefault("held", acts), quality(sae, acts, **k))[1])
    config = deep_update(demo_config, {"sae": {"expansion": 2, "k": 2, "train_tokens": 640, "batch_size": 64,
                                               "lr_warm_up_steps": 2, "holdout_fraction": 0.2, "device": "cpu"}})
    sae_jobs.train_sae(config, 1, str(path), str(tmp_path / "sae"))
    meta = json.loads((tmp_path / "sae" / "mmie.json").read_text())
    held = meta["data"]["holdout_texts"]
    assert sorted(held) == ["forget", "neighbour_ur", "retain"] and all(len(t) == 6 for t in held.values())
    train_codes, held_codes = text_codes(seen["train"]), text_codes(seen["held"])
    assert not train_codes & held_codes
    assert held_codes == {100 * TEXT_ROLES.index(r) + t for r, ts in held.items() for t in ts}
    assert len(train_codes) == 3 * 24 and meta["data"]["train_texts"] == {r: 24 for r in held}
    assert meta["quality"]["tokens"] == len(seen["held"]) == meta["data"]["holdout_tokens"]


# ----------------------------------------------------------------------------- the job functions
def test_jobs_train_and_select(tmp_path, trained_lm, demo_texts, demo_config):
    """train_sae and select_features as the rules call them: the SAE folder, its quality and features."""
    from conftest import write_lines
    from mmie.arms.fingerprint import model_fingerprint
    from mmie.config import deep_update
    from mmie.jobs import sae as sae_jobs
    from mmie.sae.activations import collect, write_cache
    from mmie.sae.autoencoder import load_sae

    model, tok = trained_lm
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    write_lines(data / "forget" / "train.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(demo_texts["hi"][:40])])
    write_lines(data / "retain" / "train.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(demo_texts["en"][:40])])
    splits = [str(data / "forget" / "train.jsonl"), str(data / "retain" / "train.jsonl")]
    roles = {"forget": demo_texts["hi"][:40], "retain": demo_texts["en"][:40], "neighbour_ur": demo_texts["ur"][:20],
             "gibberish": demo_texts["hi"][200:210], "forget_romanized": demo_texts["en"][200:210]}
    acts = {r: collect(model, tok, t, [1], max_length=24, batch_size=16)[1] for r, t in roles.items()}
    cache = tmp_path / "acts" / "layer1.safetensors"
    write_cache(cache, 1, acts, model_fingerprint(model))
    config = deep_update(demo_config, {
        "model": {"source": "local", "path": str(tmp_path / "model"), "device": "cpu"},
        "sae": {"expansion": 2, "k": 4, "train_tokens": 2560, "batch_size": 128, "lr_warm_up_steps": 2,
                "quality_texts": 6},
        "features": {"method": "frequency", "retain_max_freq": 1.0, "min_forget_freq": 0.0, "n_features": 3},
        "layers": {"activations": {"max_length": 24, "batch_size": 8}}})
    out = tmp_path / "sae" / "layer1"
    sae_jobs.train_sae(config, 1, str(cache), str(out))
    meta = json.loads((out / "mmie.json").read_text())
    trained_on = sum(len(acts[r][0]) for r in ("forget", "retain", "neighbour_ur"))
    assert meta["data"]["roles"] == ["forget", "neighbour_ur", "retain"]  # no gibberish, no romanized
    assert meta["data"]["train_tokens"] + meta["data"]["holdout_tokens"] == trained_on
    assert meta["quality"]["tokens"] == meta["data"]["holdout_tokens"]
    assert meta["training"]["steps"] == 20 and meta["provenance"]["rule"] == "train_sae"
    assert meta["provenance"]["runtime"]["tokens_per_s"] > 0
    assert load_sae(out, layer=1, model_fingerprint=model_fingerprint(model), d_in=32).cfg.d_sae == 64
    feats, qual = tmp_path / "sae" / "features" / "layer1.json", tmp_path / "sae" / "quality" / "layer1.json"
    sae_jobs.select_features(config, 1, None, splits, str(cache), str(out), str(feats), str(qual))
    q = json.loads(qual.read_text())
    assert {"layer", "fvu", "l0", "dead_share", "ce_clean", "ce_sae", "ce_zero", "loss_recovered", "provenance"} <= set(q)
    # loss recovered on held-out texts only: 4 of each role's 40 (holdout_fraction 0.1) < quality_texts 6
    assert q["fvu"] == meta["quality"]["fvu"] and q["texts"] == 8
    assert q["loss_recovered_texts"] == {r: meta["data"]["holdout_texts"][r] for r in ("forget", "retain")}
    f = json.loads(feats.read_text())
    assert f["method"] == "frequency" and f["layer"] == 1 and 1 <= len(f["features"]) <= 3
    assert f["provenance"]["rule"] == "select_features"
    # the held-out texts are checked against the cache: data that is not what was cached is an error
    forget_file = data / "forget" / "train.jsonl"
    write_lines(forget_file, [{"id": str(i), "text": "नमस्ते"} for i in range(40)])
    with pytest.raises(DataError, match=r"forget text \d+ has \d+ cached tokens .* cache was built from other texts"):
        sae_jobs.select_features(config, 1, None, splits, str(cache), str(out), str(feats), str(qual))
    write_lines(forget_file, [{"id": str(i), "text": t} for i, t in enumerate(demo_texts["hi"][:40])])
    # an SAE trained before texts were held out (no data.holdout_texts) is refused
    meta_file = out / "mmie.json"
    old_meta = json.loads(meta_file.read_text())
    del old_meta["data"]["holdout_texts"]
    meta_file.write_text(json.dumps(old_meta))
    with pytest.raises(SAEError, match="held out tokens, not texts.*rerun train_sae"):
        sae_jobs.select_features(config, 1, None, splits, str(cache), str(out), str(feats), str(qual))
    # a cache from another model is refused before anything is computed
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.embed_tokens.weight.add_(1.0)
    write_cache(cache, 1, acts, model_fingerprint(other))
    with pytest.raises(Exception, match="fingerprint"):
        sae_jobs.select_features(config, 1, None, splits, str(cache), str(out), str(feats), str(qual))
