"""RMU as a trained arm (issue 16, point 2): its loss against a hand computation, the layers it
updates, its checkpoint, what training does to the activations, its config errors, resume."""
import copy
import json
import types

import pytest
import torch

from conftest import ROOT, write_lines
from mmie import arms
from mmie.arms import resume, unlearn
from mmie.arms.lora_adapter import LoraAdapter
from mmie.arms.methods import rmu
from mmie.config import check_arm, load
from mmie.errors import ConfigError
from mmie.model.likelihood import right_pad
from mmie.seeding import seed_everything

TRAIN = {"objective": "npo", "beta": 0.1, "bound": 10.0, "retain_kl": 1.0, "retain_nll": 0.0, "lr": 1e-2,
         "weight_decay": 0.0, "max_steps": 12, "warmup_steps": 2, "batch_size": 4, "grad_clip": 1.0,
         "eval_every": 4, "max_retain_ppl_ratio": 50.0, "max_length": 32, "heldout_items": 8}
CONFIG = {"layers": {"force_layers": None, "selection": {"n_layers": 1}}}


def spec(**kw):
    return arms.resolve_spec({"method": "rmu", "train": TRAIN, **kw})


@pytest.fixture(scope="module")
def deep_lm(tiny_lm):
    """tiny_lm's tokenizer with a 4-layer model, so that ℓ−2..ℓ is a strict part of the layers."""
    from mmie.model.demo import build_model

    _, tok = tiny_lm
    torch.manual_seed(1)
    cfg = {"hidden_size": 32, "layers": 4, "heads": 2, "kv_heads": 1, "intermediate_size": 64, "max_position": 128}
    return build_model(cfg, tok).eval(), tok


def seqs(tok, texts, prefix=()):
    return [list(prefix) + tok(t, add_special_tokens=False)["input_ids"][:24] for t in texts]


@pytest.fixture()
def data(tiny_lm, demo_texts):
    _, tok = tiny_lm
    return {"forget": seqs(tok, demo_texts["hi"][:40]), "retain": seqs(tok, demo_texts["en"][:40]),
            "h_forget": seqs(tok, demo_texts["hi"][200:208]), "h_retain": seqs(tok, demo_texts["en"][200:208])}


def randomize(adapter, seed=3):
    """Non-zero LoRA weights (B starts at zero), so the adapted model differs from the frozen one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def lora_layers(adapter):
    """{(layer, module)} of the adapter's LoRA weights."""
    found = set()
    for name, _ in adapter.model.named_parameters():
        if "lora_" in name:
            parts = name.split(".")
            i = parts.index("layers")
            found.add((int(parts[i + 1]), parts[i + 3]))
    return found


def test_loss_matches_a_hand_computation_with_padding_and_the_special_prefix(tiny_lm, demo_texts):
    """Both terms against an independent computation (output_hidden_states, Python loops over the
    valid positions); padding and the special prefix (here a fake BOS) do not count; the terms of
    two micro-batches add up to the whole batch's."""
    model, tok = copy.deepcopy(tiny_lm[0]).eval(), tiny_lm[1]
    bos = [5]
    s = spec(layers=[0], steering=3.0, retain_weight=7.0)
    adapter = arms.create_adapter(CONFIG, s, model)
    randomize(adapter)
    forget = seqs(tok, demo_texts["hi"][:4], bos)
    forget[1], forget[3] = forget[1][:6], forget[3][:9]              # rows of different lengths: padding
    retain = seqs(tok, demo_texts["en"][:4], bos)
    retain[0] = retain[0][:5]
    obj = rmu.objective(s, adapter, forget, tok.pad_token_id, bos, seed=11)
    assert obj.spec["retain_loss"].weight == 7.0 and obj.spec["forget_loss"].weight == 1.0

    def states(ids_list, use_adapter):
        ids, mask = right_pad(ids_list, tok.pad_token_id, "cpu")
        with torch.no_grad(), (adapter.active() if use_adapter else adapter.reference()):
            return ids, mask, adapter.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]

    # c = steering × mean per-token norm of the frozen forget activations (prefix and padding left out)
    _, _, frozen_f = states(forget, False)
    norms = [frozen_f[r, t].norm() for r, row in enumerate(forget) for t in range(1, len(row))]
    norm = float(sum(norms) / len(norms))
    assert obj.record["activation_norm"] == pytest.approx(norm, rel=1e-5)
    assert obj.record["c"] == pytest.approx(3.0 * norm, rel=1e-5)
    u = torch.rand(32, generator=torch.Generator().manual_seed(11))
    u = u / u.norm()
    target = 3.0 * norm * u

    _, _, h_f = states(forget, True)
    _, _, h_r = states(retain, True)
    _, _, ref_r = states(retain, False)
    f_terms = [((h_f[r, t] - target) ** 2).mean() for r, row in enumerate(forget) for t in range(1, len(row))]
    r_terms = [((h_r[r, t] - ref_r[r, t]) ** 2).mean() for r, row in enumerate(retain) for t in range(1, len(row))]
    want_f, want_r = float(sum(f_terms) / len(f_terms)), float(sum(r_terms) / len(r_terms))
    assert want_r > 1e-4                                            # the adapter changes the retain activations

    f_ids, f_mask = right_pad(forget, tok.pad_token_id, "cpu")
    r_ids, r_mask = right_pad(retain, tok.pad_token_id, "cpu")
    totals = obj.totals(f_mask, r_mask)
    whole = obj.terms(adapter.model, adapter, f_ids, f_mask, r_ids, r_mask, totals)
    assert float(whole["forget_loss"]) == pytest.approx(want_f, rel=1e-5)
    assert float(whole["retain_loss"]) == pytest.approx(want_r, rel=1e-5)
    halves = [obj.terms(adapter.model, adapter, *unlearn._rows(f_ids, f_mask, rows), *unlearn._rows(r_ids, r_mask, rows),
                        totals) for rows in (slice(0, 2), slice(2, 4))]
    for k in whole:
        assert float(halves[0][k] + halves[1][k]) == pytest.approx(float(whole[k]), rel=1e-5)

    # a sequence without the special prefix is an error, not a silently shifted mask
    with pytest.raises(ValueError, match="does not start with the tokenizer's special prefix"):
        obj.terms(adapter.model, adapter, f_ids[:, 1:], f_mask[:, 1:], r_ids, r_mask, totals)


def test_u_is_a_seeded_unit_vector_of_the_reference_draw():
    u, again, other = rmu.direction(64, 0), rmu.direction(64, 0), rmu.direction(64, 1)
    assert torch.equal(u, again) and not torch.equal(u, other)
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-6) and bool((u >= 0).all())   # uniform [0, 1), normalised


@pytest.mark.parametrize("layer,update,expected", [(3, 3, [1, 2, 3]), (3, 1, [3]), (1, 3, [0, 1]), (0, 5, [0])])
def test_only_the_mlps_of_the_updated_layers_get_adapter_weights(deep_lm, layer, update, expected):
    """ℓ−update+1..ℓ, clipped at layer 0 (an update_layers larger than ℓ+1 is not an error)."""
    model = copy.deepcopy(deep_lm[0])
    adapter = arms.create_adapter(CONFIG, spec(layers=[layer], update_layers=update), model)
    assert adapter.layers == [layer] and adapter.updated_layers == expected
    assert lora_layers(adapter) == {(i, m) for i in expected for m in ("gate_proj", "up_proj", "down_proj")}
    adapter = arms.create_adapter(CONFIG, spec(layers=[layer], targets=["down_proj"]), copy.deepcopy(deep_lm[0]))
    assert {m for _, m in lora_layers(adapter)} == {"down_proj"}


def test_the_selected_layer_is_used_without_own_layers(deep_lm):
    adapter = arms.create_adapter(CONFIG, spec(), copy.deepcopy(deep_lm[0]), selected=[2])
    assert adapter.layers == [2] and {i for i, _ in lora_layers(adapter)} == {0, 1, 2}


def test_checkpoint_round_trips_through_lora_load_and_arms_build(deep_lm, tmp_path):
    base = copy.deepcopy(deep_lm[0])
    adapter = arms.create_adapter(CONFIG, spec(layers=[2]), copy.deepcopy(deep_lm[0]))
    randomize(adapter)
    adapter.save(tmp_path / "ckpt")
    ids = torch.tensor([[3, 17, 42, 9, 120, 7]])
    with torch.no_grad(), adapter.active():
        want = adapter.model(input_ids=ids).logits
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    assert not torch.allclose(want, plain)
    loaded = LoraAdapter.load(copy.deepcopy(base), tmp_path / "ckpt")
    arm = arms.build("rmu", {"method": "rmu"}, types.SimpleNamespace(model=copy.deepcopy(base)),
                     str(tmp_path / "ckpt"))
    assert arm.method == "rmu"
    for a in (loaded, arm):
        with torch.no_grad(), a.active():
            assert torch.equal(a.model(input_ids=ids).logits, want)
        with torch.no_grad(), a.reference():
            assert torch.equal(a.model(input_ids=ids).logits, plain)


def hidden(adapter, layer, ids_list, pad_id, use_adapter):
    ids, mask = right_pad(ids_list, pad_id, "cpu")
    with torch.no_grad(), (adapter.active() if use_adapter else adapter.reference()):
        h = adapter.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer + 1]
    return h[mask.bool()]


def test_training_moves_forget_activations_to_c_u_and_keeps_retain_ones(deep_lm, demo_texts):
    """On held-out texts: forget activations at ℓ get closer to c·u (and turn toward u), retain
    activations stay close to the frozen model's. The loop takes the method's objective (here with
    a train.objective it does not know, which it no longer checks then)."""
    model, tok = copy.deepcopy(deep_lm[0]), deep_lm[1]
    layer = 2
    s = spec(layers=[layer], steering=2.0, retain_weight=10.0)
    seed_everything(0)
    adapter = arms.create_adapter(CONFIG, s, model)
    forget, retain = seqs(tok, demo_texts["hi"][:60]), seqs(tok, demo_texts["en"][:60])
    h_forget, h_retain = seqs(tok, demo_texts["hi"][200:216]), seqs(tok, demo_texts["en"][200:216])
    obj = rmu.objective(s, adapter, forget, tok.pad_token_id, [], seed=0)
    target = obj.control

    def measure(use_adapter):
        f = hidden(adapter, layer, h_forget, tok.pad_token_id, use_adapter)
        r = hidden(adapter, layer, h_retain, tok.pad_token_id, use_adapter)
        return {"dist": float((f - target).norm(dim=-1).mean()),
                "cos": float(torch.nn.functional.cosine_similarity(f, target[None], dim=-1).mean()), "r": r}

    before = measure(False)
    cfg = {**TRAIN, "objective": "rmu-is-not-a-train-objective", "max_steps": 30, "eval_every": 10}
    res = unlearn.train(adapter.model, adapter, tok.pad_token_id, forget, retain, h_forget, h_retain, cfg, seed=0,
                        objective=obj)
    assert {"forget_loss", "retain_loss"} <= set(res.log_rows[1])
    after = measure(True)
    assert after["dist"] < 0.6 * before["dist"], (before, after)
    assert after["cos"] > before["cos"] + 0.5, (before, after)
    moved_r = float((after["r"] - before["r"]).norm(dim=-1).mean())
    assert moved_r < 0.25 * (before["dist"] - after["dist"]), (moved_r, before["dist"], after["dist"])


def test_one_layer_exactly_is_a_config_error_naming_the_key(demo_config, deep_lm):
    cfg = copy.deepcopy(demo_config)
    with pytest.raises(ConfigError, match=r"arms\.r\.layers = \[1, 2\]: an rmu arm misdirects exactly one layer"):
        check_arm(cfg, "r", {"method": "rmu", "layers": [1, 2], "train": {}}, ROOT)
    check_arm(cfg, "r", {"method": "rmu", "layers": [1], "train": {}}, ROOT)
    cfg["layers"]["selection"]["n_layers"] = 2
    with pytest.raises(ConfigError, match=r"layers\.selection\.n_layers is 2 .* set arms\.r\.layers: \[L\]"):
        check_arm(cfg, "r", {"method": "rmu", "train": {}}, ROOT)
    check_arm(cfg, "r", {"method": "rmu", "layers": [1], "train": {}}, ROOT)   # its own layer wins
    cfg["layers"]["force_layers"] = [0, 1]
    with pytest.raises(ConfigError, match=r"layers\.force_layers = \[0, 1\]"):
        check_arm(cfg, "r", {"method": "rmu", "train": {}}, ROOT)
    with pytest.raises(ConfigError, match="rmu needs exactly one layer, got \\[1, 2\\]"):
        arms.create_adapter(CONFIG, spec(), copy.deepcopy(deep_lm[0]), selected=[1, 2])
    with pytest.raises(ConfigError, match=r"arms\.r: \[.alpha.\] is not a setting of method .rmu."):
        check_arm(demo_config, "r", {"method": "rmu", "alpha": 3.0, "train": {}}, ROOT)


def test_the_demo_config_declares_an_rmu_arm_the_schema_accepts():
    cfg = load(ROOT / "config.yaml")
    assert cfg["arms"]["rmu"]["method"] == "rmu"
    assert arms.resolve_spec(cfg["arms"]["rmu"])["update_layers"] == 3


def _run(tiny_lm, data, store, seed=0):
    model = copy.deepcopy(tiny_lm[0]).eval()
    s = spec(layers=[1])
    seed_everything(seed)
    adapter = arms.create_adapter(CONFIG, s, model)
    obj = rmu.objective(s, adapter, data["forget"], tiny_lm[1].pad_token_id, [], seed)
    return unlearn.train(adapter.model, adapter, tiny_lm[1].pad_token_id, data["forget"], data["retain"],
                         data["h_forget"], data["h_retain"], TRAIN, seed=seed, resume=store, objective=obj)


def test_a_resumed_rmu_run_ends_bit_identical(tiny_lm, data, tmp_path):
    whole = _run(tiny_lm, data, None)
    store = resume.ResumeStore(tmp_path / "seed0.resume", key="rmu")
    first = _run(tiny_lm, data, store)              # leaves the state of step 8 behind (the job clears it)
    assert torch.load(store.path, weights_only=True)["step"] == 8
    again = _run(tiny_lm, data, store)
    assert again.summary["resumed_after_step"] == 8
    for res in (first, again):
        assert res.state.keys() == whole.state.keys()
        assert all(torch.equal(res.state[k], whole.state[k]) for k in whole.state)
        assert res.log_rows == whole.log_rows


def test_the_train_job_records_what_rmu_used(tiny_lm, demo_texts, demo_config, tmp_path):
    """The train job passes the method's objective and writes its record into manifest.json; the
    checkpoint is a peft adapter folder that arms.build loads."""
    from mmie.jobs.train import train as train_job

    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = lambda texts: [{"id": f"x{i}", "text": t} for i, t in enumerate(texts)]  # noqa: E731
    for role, lang in (("forget", "hi"), ("retain", "en")):
        write_lines(tmp_path / "data" / role / "train.jsonl", rows(demo_texts[lang][:24]))
        write_lines(tmp_path / "data" / role / "dev.jsonl", rows(demo_texts[lang][200:206]))
    config = copy.deepcopy(demo_config)
    config["model"].update(source="local", path=str(tmp_path / "model"), device="cpu")
    config["resources"]["torch_threads"] = 1
    config["arms"] = {"rmu": {"method": "rmu", "layers": [1], "steering": 4.0,
                              "train": {**TRAIN, "max_steps": 4, "eval_every": 2}}}
    out = tmp_path / "checkpoints" / "rmu" / "seed0"
    splits = [str(tmp_path / "data" / role / f"{part}.jsonl") for role in ("forget", "retain") for part in ("train", "dev")]
    train_job(config, "rmu", 0, None, splits, str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["objective"]
    assert manifest["layers"] == [1] and rec["layer"] == 1 and rec["updated_layers"] == [0, 1]
    assert rec["c"] == pytest.approx(4.0 * rec["activation_norm"]) and rec["activation_norm"] > 0
    assert rec["retain_weight"] == 10.0 and rec["direction"]["seed"] == 0
    assert rec["direction"]["norm"] == pytest.approx(1.0, abs=1e-6)
    log = (out / "train_log.csv").read_text().splitlines()[0].split(",")
    assert "forget_loss" in log and "retain_loss" in log and "retain_kl" not in log
    arm = arms.build("rmu", config["arms"]["rmu"], types.SimpleNamespace(model=copy.deepcopy(model)), str(out))
    assert arm.adapter.parameters()
