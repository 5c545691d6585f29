"""Trained arms (issue: LoRA / ReFT): objectives, hygiene, strict checkpoints, hooks."""
import copy
import math

import pytest
import torch

from mmie.arms import objectives, resume, unlearn
from mmie.arms.lora_adapter import LoraAdapter
from mmie.arms.reft_adapter import ReftAdapter
from mmie.errors import ConfigError, ModelError
from mmie.model.hooks import hook_count
from mmie.model.likelihood import right_pad

TRAIN = {"objective": "npo", "beta": 0.1, "bound": 10.0, "retain_kl": 1.0, "retain_nll": 0.0, "lr": 5e-3,
         "weight_decay": 0.0, "max_steps": 12, "warmup_steps": 2, "batch_size": 4, "grad_clip": 1.0,
         "eval_every": 4, "max_retain_ppl_ratio": 50.0, "max_length": 32, "heldout_items": 8}


@pytest.fixture()
def fresh(tiny_lm):
    model, tok = tiny_lm
    return copy.deepcopy(model).eval(), tok


def seqs(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"][:32] for t in texts]


@pytest.fixture()
def data(tiny_lm, demo_texts):
    _, tok = tiny_lm
    return {"forget": seqs(tok, demo_texts["hi"][:40]), "retain": seqs(tok, demo_texts["en"][:40]),
            "h_forget": seqs(tok, demo_texts["hi"][200:208]), "h_retain": seqs(tok, demo_texts["en"][200:208])}


def logits(model, tok, text="मेरा नाम राज है and the weather"):
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        return model(**ids).logits.clone()


def test_losses_are_token_averaged_and_ignore_padding(fresh):
    model, tok = fresh
    a, b = [5, 6, 7, 8, 9], [10, 11, 12]
    ids1, m1 = right_pad([a], tok.pad_token_id, "cpu")
    ids2, m2 = right_pad([a, a + [3] * 0], tok.pad_token_id, "cpu")
    ids3, m3 = right_pad([b, a], tok.pad_token_id, "cpu")   # b is padded to a's length
    with torch.no_grad():
        lp1, v1 = objectives.token_logprobs(model(input_ids=ids1, attention_mask=m1).logits, ids1, m1)
        lp3, v3 = objectives.token_logprobs(model(input_ids=ids3, attention_mask=m3).logits, ids3, m3)
        lp2, v2 = objectives.token_logprobs(model(input_ids=ids2, attention_mask=m2).logits, ids2, m2)
    assert v3[0].sum() == len(b) - 1 and v3[1].sum() == len(a) - 1
    # the padded positions of b contribute nothing: row 1 of the mixed batch equals a alone
    assert torch.allclose(objectives.masked_mean(lp3[1:], v3[1:]), objectives.masked_mean(lp1, v1), atol=1e-5)
    for kind in ("ga", "bounded", "npo"):
        l1 = objectives.forget_loss(kind, lp1, v1, lp1.detach() - 0.1, 0.1, 10.0)
        l2 = objectives.forget_loss(kind, lp2, v2, lp2.detach() - 0.1, 0.1, 10.0)
        assert torch.allclose(l1, l2, atol=1e-5), kind
    with torch.no_grad():
        lg = model(input_ids=ids3, attention_mask=m3).logits
    assert float(objectives.kl_to_reference(lg, lg, m3)) == pytest.approx(0.0, abs=1e-6)


def test_npo_at_reference_equals_its_known_value():
    lp = torch.full((2, 4), -2.0)
    valid = torch.ones(2, 4, dtype=torch.bool)
    # ratio 0: -(2/beta) log sigmoid(0) = (2/beta) log 2
    assert float(objectives.forget_loss("npo", lp, valid, lp.clone(), 0.1, 10.0)) == pytest.approx(20 * 0.693147, rel=1e-5)
    assert float(objectives.forget_loss("ga", lp, valid, None, 0.1, 10.0)) == pytest.approx(-2.0)


@pytest.mark.parametrize("method", ["lora", "reft"])
def test_training_raises_forget_loss_and_leaves_the_base_untouched(fresh, data, method):
    model, tok = fresh
    before = logits(model, tok)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    adapter = (LoraAdapter.create(model, {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
               if method == "lora" else ReftAdapter(model, [1], 2, "loreft"))
    res = unlearn.train(adapter.model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                        data["h_retain"], {**TRAIN, "objective": "ga", "lr": 5e-2}, seed=0)
    evals = [r for r in res.log_rows if "forget_nll" in r]
    assert evals[-1]["forget_nll"] > evals[0]["forget_nll"] + 0.05       # forgetting goes the intended way
    with adapter.reference():
        assert torch.allclose(logits(adapter.model, tok), before, atol=1e-5)  # the frozen reference
    base_now = adapter.model.get_base_model().state_dict() if method == "lora" else model.state_dict()
    for k, v in weights.items():
        if k in base_now:
            assert torch.equal(base_now[k], v), k
    assert res.summary["tokens_per_second"] > 0


def test_lora_save_load_round_trip_and_strictness(fresh, data, tmp_path, tiny_lm):
    model, tok = fresh
    torch.manual_seed(1)
    adapter = LoraAdapter.create(model, {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
    unlearn.train(adapter.model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                  data["h_retain"], {**TRAIN, "max_steps": 4}, seed=0)
    with adapter.active():
        trained = logits(adapter.model, tok)
    adapter.save(tmp_path)
    again = LoraAdapter.load(copy.deepcopy(tiny_lm[0]).eval(), tmp_path)
    with again.active():
        assert torch.allclose(logits(again.model, tok), trained, atol=1e-6)
    assert not torch.allclose(trained, logits(tiny_lm[0], tok), atol=1e-4)   # the adapter does something
    # a checkpoint with a renamed tensor is refused
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "adapter_model.safetensors"))
    key = next(iter(sd))
    sd[key.replace("q_proj", "k_proj")] = sd.pop(key)
    save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ModelError, match="does not match"):
        LoraAdapter.load(copy.deepcopy(tiny_lm[0]).eval(), tmp_path)


def test_reft_save_load_round_trip(fresh, data, tmp_path, tiny_lm):
    model, tok = fresh
    torch.manual_seed(2)
    adapter = ReftAdapter(model, [0, 1], 2, "loreft")
    unlearn.train(model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                  data["h_retain"], {**TRAIN, "max_steps": 4}, seed=0)
    with adapter.active():
        trained = logits(model, tok)
    adapter.save(tmp_path)
    fresh_model = copy.deepcopy(tiny_lm[0]).eval()
    again = ReftAdapter.load(fresh_model, tmp_path)
    with again.active():
        assert torch.allclose(logits(fresh_model, tok), trained, atol=1e-5)
    assert not torch.allclose(trained, logits(fresh_model, tok), atol=1e-4)
    # the rotation stayed orthogonal (no weight-decay collapse)
    r = again.interventions["0"].rotate_layer.weight
    assert torch.allclose(r.T @ r, torch.eye(r.shape[1]), atol=1e-4)


def test_reft_rejects_weight_decay_and_bad_layers(fresh):
    model, _ = fresh
    with pytest.raises(ConfigError, match="weight_decay"):
        ReftAdapter.create(model, {"intervention": "loreft", "rank": 2, "train": {"weight_decay": 0.01}}, [0])
    with pytest.raises(ConfigError, match="do not exist"):
        ReftAdapter(model, [7], 2, "loreft")


def test_reft_hooks_are_removed_when_an_exception_is_raised(fresh):
    model, tok = fresh
    clean = logits(model, tok)
    adapter = ReftAdapter(model, [0, 1], 2, "loreft")
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.active():
            assert hook_count(model) == 2
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    assert torch.allclose(logits(model, tok), clean)


def test_nan_guard_stops_with_the_step_and_writes_no_checkpoint(fresh, data, monkeypatch, tmp_path):
    model, tok = fresh
    adapter = ReftAdapter(model, [0], 2, "loreft")
    real_forward = model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= 5:    # two grad-enabled forwards per step: step 3 is poisoned
                out.logits = out.logits * float("nan")
        return out

    monkeypatch.setattr(model, "forward", poisoned)
    with pytest.raises(unlearn.NonFiniteError, match="step 3"):
        unlearn.train(model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                      data["h_retain"], TRAIN, seed=0)


def _train_lora(tiny_lm, data, seed):
    from mmie.seeding import seed_everything

    model = copy.deepcopy(tiny_lm[0]).eval()
    seed_everything(seed)
    adapter = LoraAdapter.create(model, {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
    unlearn.train(adapter.model, adapter, tiny_lm[1].pad_token_id, data["forget"], data["retain"], data["h_forget"],
                  data["h_retain"], {**TRAIN, "max_steps": 4}, seed=seed)
    return adapter.state_dict()


def test_same_seed_same_adapter_different_seed_different_run(tiny_lm, data):
    a, b, c = _train_lora(tiny_lm, data, 0), _train_lora(tiny_lm, data, 0), _train_lora(tiny_lm, data, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_leaving_the_retain_budget_at_the_first_evaluation_is_an_error(fresh, data):
    model, tok = fresh
    adapter = ReftAdapter(model, [0], 2, "loreft")   # LoReFT is not the identity at init: step 0 is no result
    with pytest.raises(unlearn.NoStateWithinBudget, match="no checkpoint was written"):
        unlearn.train(model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                      data["h_retain"], {**TRAIN, "max_retain_ppl_ratio": 0.5}, seed=0)  # budget below base


@pytest.mark.parametrize("kind", ["loreft", "noreft"])
def test_reft_identity_init_leaves_the_model_unchanged(fresh, kind):
    model, tok = fresh
    clean = logits(model, tok)
    adapter = ReftAdapter(model, [0, 1], 2, kind, init="identity")
    with adapter.active():
        assert torch.allclose(logits(model, tok), clean, atol=1e-5)
    random_start = ReftAdapter(model, [0], 2, kind)
    with random_start.active():
        assert not torch.allclose(logits(model, tok), clean, atol=1e-4)


# ----------------------------------------------------------------------------- NPO as published
def test_npo_uses_sequence_log_likelihoods_as_published():
    """Zhang et al. 2024: L = -(2/beta) mean_seq log sigmoid(-beta (log pi_theta(y|x) - log pi_ref(y|x))),
    log pi(y|x) = the masked SUM of token log-probabilities. Hand computation, padding included."""
    pad = -100.0   # a padded position: must not count
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.2, pad]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, pad]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    # sequence log-likelihoods: theta -3.5 and -3.2, reference -3.0 and -3.0 -> log-ratios -0.5 and -0.2
    for beta in (0.1, 2.0):
        expected = -(2 / beta) * 0.5 * (math.log(1 / (1 + math.exp(-(-beta * -0.5))))
                                        + math.log(1 / (1 + math.exp(-(-beta * -0.2)))))
        got = float(objectives.forget_loss("npo", lp, valid, ref, beta, 10.0))
        assert got == pytest.approx(expected, rel=1e-6), beta
    # the token-mean variant is a separately named objective: means -3.5/3, -1.6 vs -1.0, -1.5
    beta = 0.1
    r1, r2 = -3.5 / 3 - -1.0, -1.6 - -1.5
    expected_mean = -(2 / beta) * 0.5 * (math.log(1 / (1 + math.exp(beta * r1))) + math.log(1 / (1 + math.exp(beta * r2))))
    assert float(objectives.forget_loss("npo_token_mean", lp, valid, ref, beta, 10.0)) == pytest.approx(expected_mean,
                                                                                                      rel=1e-6)
    assert expected_mean != pytest.approx(float(objectives.forget_loss("npo", lp, valid, ref, beta, 10.0)), rel=1e-3)


def test_npo_gradient_weights_every_token_of_a_sequence_alike():
    """With the summed log-likelihood, dL/d lp_t = 2 sigmoid(beta r) / n_sequences for every valid token
    of a sequence with log-ratio r, and 0 on padding; the token mean would divide it by the length."""
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.2, -7.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -7.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    objectives.forget_loss("npo", lp, valid, ref, 0.1, 10.0).backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = torch.tensor([[sig(0.1 * -0.5)] * 3, [sig(0.1 * -0.2)] * 2 + [0.0]])   # 2 sigma(beta r) / 2 sequences
    assert torch.allclose(lp.grad, want, atol=1e-6)


def test_schema_names_the_token_mean_variant_separately():
    import yaml

    from conftest import ROOT

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    objective = schema["$defs"]["train"]["properties"]["objective"]
    assert set(objective["enum"]) == set(objectives.OBJECTIVES)
    assert objective["default"] == "npo"


# ----------------------------------------------------------------------------- NaN never passes a budget
def _nan_heldout(monkeypatch, from_eval: int, which: str = "retain"):
    """Make the adapter's held-out metric NaN from its ``from_eval``-th evaluation on (1-based)."""
    real = unlearn.heldout_nll
    calls = {"retain": 0, "forget": 0}

    def fake(model, adapter, seqs, pad_id, device, batch_size=32, use_adapter=True, **kw):
        value = real(model, adapter, seqs, pad_id, device, batch_size, use_adapter, **kw)
        if not use_adapter:
            return value
        role = "retain" if calls["retain"] == calls["forget"] else "forget"   # retain is evaluated first
        calls[role] += 1
        return float("nan") if role == which and calls[role] >= from_eval else value

    monkeypatch.setattr(unlearn, "heldout_nll", fake)


@pytest.mark.parametrize("which", ["retain", "forget"])
def test_a_nan_heldout_metric_stops_training_and_is_never_kept(fresh, data, monkeypatch, which):
    model, tok = fresh
    torch.manual_seed(0)
    adapter = ReftAdapter(model, [0], 2, "loreft")
    _nan_heldout(monkeypatch, from_eval=2, which=which)   # evaluations at steps 4, 8, 12: step 8 is NaN
    res = unlearn.train(model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                        data["h_retain"], TRAIN, seed=0)
    assert res.summary["kept_step"] == 4
    assert res.summary["steps_run"] == 8
    assert res.summary["stopped"].startswith("early stop at step 8")
    other = "forget" if which == "retain" else "retain"
    assert which in res.summary["stopped"] and other not in res.summary["stopped"]   # names what failed


def test_a_nan_heldout_perplexity_at_the_first_evaluation_is_an_error(fresh, data, monkeypatch):
    model, tok = fresh
    adapter = ReftAdapter(model, [0], 2, "loreft")
    _nan_heldout(monkeypatch, from_eval=1)
    with pytest.raises(unlearn.NoStateWithinBudget, match="nan is not <="):
        unlearn.train(model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                      data["h_retain"], TRAIN, seed=0)


def test_a_nan_base_perplexity_is_an_error_not_a_budget(fresh, data, monkeypatch):
    model, tok = fresh
    adapter = ReftAdapter(model, [0], 2, "loreft")
    monkeypatch.setattr(unlearn, "heldout_nll", lambda *a, **k: float("nan"))
    with pytest.raises(unlearn.NonFiniteError, match="base model's held-out retain perplexity"):
        unlearn.train(model, adapter, tok.pad_token_id, data["forget"], data["retain"], data["h_forget"],
                      data["h_retain"], TRAIN, seed=0)


# ----------------------------------------------------------------------------- resume
def _adapter(method, model):
    if method == "lora":
        return LoraAdapter.create(model, {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
    return ReftAdapter(model, [0, 1], 2, "loreft")


def _run(tiny_lm, data, method, store, seed=0):
    from mmie.seeding import seed_everything

    model = copy.deepcopy(tiny_lm[0]).eval()
    seed_everything(seed)
    adapter = _adapter(method, model)
    res = unlearn.train(adapter.model, adapter, tiny_lm[1].pad_token_id, data["forget"], data["retain"],
                        data["h_forget"], data["h_retain"], {**TRAIN, "lr": 2e-2}, seed=seed, resume=store)
    return res


@pytest.mark.parametrize("method", ["lora", "reft"])
def test_resumed_training_ends_bit_identical_to_an_uninterrupted_run(tiny_lm, data, tmp_path, method, caplog):
    """The state saved after step 8 of 12, loaded into a fresh adapter, continues to the very same
    adapter, log rows and kept step (LoReFT: pyreft's load_state_dict would rebuild the rotation and
    leave the optimizer training orphaned tensors)."""
    whole = _run(tiny_lm, data, method, None)
    store = resume.ResumeStore(tmp_path / "seed0.resume", key="run-a")
    first = _run(tiny_lm, data, method, store)   # leaves the state of step 8 behind (the pipeline clears it)
    assert first.summary["resumed_after_step"] is None
    saved = torch.load(store.path, weights_only=True)
    assert saved["step"] == 8 and [r["step"] for r in saved["rows"]] == list(range(9))
    with caplog.at_level("WARNING", logger="mmie.arms.unlearn"):
        again = _run(tiny_lm, data, method, store)
    assert again.summary["resumed_after_step"] == 8
    assert "resuming after step 8 of 12" in caplog.text
    for res in (first, again):
        assert res.state.keys() == whole.state.keys()
        assert all(torch.equal(res.state[k], whole.state[k]) for k in whole.state)
        assert res.log_rows == whole.log_rows
        assert res.summary["kept_step"] == whole.summary["kept_step"]
    assert any(not torch.equal(saved["kept"]["state"][k], whole.state[k]) for k in whole.state)  # steps 9-12 mattered


def test_a_resume_state_of_another_run_is_ignored_loudly(tiny_lm, data, tmp_path, caplog):
    store = resume.ResumeStore(tmp_path / "r", key="settings-a")
    _run(tiny_lm, data, "lora", store)
    with caplog.at_level("WARNING", logger="mmie.arms.unlearn"):
        other = _run(tiny_lm, data, "lora", resume.ResumeStore(tmp_path / "r", key="settings-b"))
    assert other.summary["resumed_after_step"] is None
    assert "belongs to another run" in caplog.text
    assert [r["step"] for r in other.log_rows] == list(range(13))


def test_an_unreadable_resume_state_is_an_error_naming_the_file(tiny_lm, data, tmp_path):
    store = resume.ResumeStore(tmp_path / "r", key="k")
    store.dir.mkdir()
    store.path.write_bytes(b"not a torch file")
    with pytest.raises(resume.ResumeError, match=r"(?s)state\.pt cannot be read.*delete"):
        _run(tiny_lm, data, "lora", store)
