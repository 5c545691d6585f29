"""Memory back-off in training (issue 18): a training step that runs out of memory is redone in
micro-batches with accumulated gradients and gives the adapter of a run without the error; the
held-out NLL passes halve their batch; every halving is recorded in the summary's ``oom_retries``;
at micro-batch size 1 it is an error naming the step."""
import contextlib
import copy

import pytest
import torch
from test_unlearn import TRAIN, data, seqs  # noqa: F401  (data is a fixture)

from conftest import oom_above
from mmie.arms import objectives, resume, unlearn
from mmie.arms.lora_adapter import LoraAdapter
from mmie.arms.reft_adapter import ReftAdapter
from mmie.model.likelihood import right_pad
from mmie.seeding import seed_everything

CFG = {**TRAIN, "max_steps": 6, "eval_every": 3, "lr": 2e-2, "retain_nll": 0.5}


def oom_in_training_above(model, limit: int):
    """CUDA's out-of-memory error for grad-enabled forward passes (the training step) larger than ``limit``."""
    return oom_above(model, limit, grad_only=True)


def _train(tiny_lm, data, method, objective, oom=None, store=None):  # noqa: F811
    model = copy.deepcopy(tiny_lm[0]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    seed_everything(0)
    adapter = (LoraAdapter.create(model, {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
               if method == "lora" else ReftAdapter(model, [0, 1], 2, "loreft"))
    with oom(model) if oom else contextlib.nullcontext():
        return unlearn.train(adapter.model, adapter, tiny_lm[1].pad_token_id, data["forget"], data["retain"],
                             data["h_forget"], data["h_retain"], {**CFG, "objective": objective}, seed=0,
                             desc="train t", resume=store)


def _assert_close(a: dict, b: dict, rel: float):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=rel, atol=rel * float(b[k].abs().max())), k


@pytest.mark.parametrize("method,objective", [("lora", "npo"), ("lora", "bounded"), ("reft", "bounded"),
                                              ("reft", "npo_token_mean"), ("lora", "ga")])
def test_an_out_of_memory_step_is_redone_in_micro_batches_to_the_same_adapter(tiny_lm, data, method,  # noqa: F811
                                                                               objective):
    clean = _train(tiny_lm, data, method, objective)
    assert clean.summary["oom_retries"] == [] and clean.summary["micro_batch_size"] == CFG["batch_size"]
    backed = _train(tiny_lm, data, method, objective, oom=lambda m: oom_above(m, 2))
    # held-out NLL (8 texts, batch 32) halves to 2 before step 1; step 1 halves its micro-batch 4 -> 2, once
    assert backed.summary["oom_retries"] == (
        [{"where": "train t held-out NLL", "new_batch_size": b} for b in (16, 8, 4, 2)]
        + [{"where": "train t step 1", "new_batch_size": 2}])
    assert backed.summary["micro_batch_size"] == 2
    # six AdamW steps from gradients summed in another order: measured up to 8e-6 of the largest weight
    _assert_close(backed.state, clean.state, 3e-5)
    assert [r["step"] for r in backed.log_rows] == [r["step"] for r in clean.log_rows]
    for got, want in zip(backed.log_rows, clean.log_rows, strict=True):
        assert got.keys() == want.keys()
        # rel 1e-4 and abs 1e-7: the retain KL is ~1e-4, a difference of near-equal log-probabilities
        assert [got[k] for k in got] == pytest.approx([want[k] for k in want], rel=1e-4, abs=1e-7), got["step"]


def test_an_out_of_memory_error_at_micro_batch_size_1_names_the_step(tiny_lm, data, caplog):  # noqa: F811
    with caplog.at_level("WARNING", logger="mmie.arms.unlearn"), \
            pytest.raises(RuntimeError, match=r"train t: out of memory at step 1 even in micro-batches of 1 sequence "
                                              r"\(train.batch_size 4, train.max_length 32\); lower train.max_length"):
        _train(tiny_lm, data, "lora", "npo", oom=lambda m: oom_in_training_above(m, 0))
    assert "redoing the step in micro-batches of 1" in caplog.text


@pytest.mark.parametrize("objective", objectives.OBJECTIVES)
def test_micro_batch_gradients_add_up_to_the_whole_batch(tiny_lm, data, objective):  # noqa: F811
    """One step's gradient, loss and terms in micro-batches of 3, 2 and 1 (uneven lengths, padding,
    a last micro-batch of another size) equal those of the whole batch of 5; for ``bounded`` this
    needs outer'(whole-batch mean), not the sum of the micro-batches' −B·tanh."""
    model = copy.deepcopy(tiny_lm[0]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(3)
    adapter = LoraAdapter.create(model, {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
    params = [p for p in adapter.parameters() if p.requires_grad]
    with torch.no_grad():   # move off the zero-initialised B so that every gradient is non-trivial
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    pad = tiny_lm[1].pad_token_id
    f_ids, f_mask = right_pad([s[:n] for s, n in zip(data["forget"][:5], (30, 7, 19, 3, 25), strict=True)], pad, "cpu")
    r_ids, r_mask = right_pad([s[:n] for s, n in zip(data["retain"][:5], (12, 28, 5, 20, 9), strict=True)], pad, "cpu")
    objective_ = objectives.make_objective({**CFG, "objective": objective, "bound": 2.0})

    def run(micro):
        for p in params:
            p.grad = None
        loss, parts = unlearn.step_gradients(objective_, adapter.model, adapter, params, f_ids, f_mask, r_ids,
                                             r_mask, micro, "test", 1)
        return loss, parts, {str(i): p.grad.clone() for i, p in enumerate(params)}

    whole_loss, whole_parts, whole = run(5)
    assert all(float(g.abs().max()) > 0 for g in whole.values())
    for micro in (3, 2, 1):
        loss, parts, grads = run(micro)
        _assert_close(grads, whole, 1e-5)
        assert float(loss) == pytest.approx(float(whole_loss), rel=1e-5)
        assert {k: float(v) for k, v in parts.items()} == pytest.approx({k: float(v) for k, v in whole_parts.items()},
                                                                       rel=1e-5)


def test_the_micro_batch_size_and_the_retries_survive_a_resume(tiny_lm, data, tmp_path):  # noqa: F811
    store = resume.ResumeStore(tmp_path / "r", key="k")
    first = _train(tiny_lm, data, "lora", "npo", oom=lambda m: oom_in_training_above(m, 2), store=store)
    saved = torch.load(store.path, weights_only=True)
    assert saved["micro_batch"] == 2 and saved["oom_retries"] == [{"where": "train t step 1", "new_batch_size": 2}]
    again = _train(tiny_lm, data, "lora", "npo", store=store)   # no error now: it continues in micro-batches of 2
    assert again.summary["resumed_after_step"] == 3
    assert again.summary["micro_batch_size"] == 2 and again.summary["oom_retries"] == first.summary["oom_retries"]
    assert all(torch.equal(again.state[k], first.state[k]) for k in first.state)
