"""The trained-method contract, written as code (mmie.arms.method.Method, mmie.arms.unlearn.Objective): a
method that brings its own objective — one module, no other file touched — trains through the train
job, its checkpoint's manifest records the objective (``Objective.record``, empty unless the method
says more), and the checkpoint builds into an arm that changes the model."""

import copy
import json
import sys

import torch

from conftest import tiny_train_files
from mmie.arms import methods as registry

TOY = '''
"""A throwaway trained method: lora's adapter, its own objective (gradient ascent on forget, NLL on retain)."""
from mmie.arms.method import Method
from mmie.arms.methods import lora


def objective(spec, adapter, forget, pad_id, prefix, seed):
    from mmie.arms.objectives import Objective, Term, count, masked_mean, next_token_valid, token_logprobs

    class Ascent(Objective):   # no ``record``: the base's empty one
        spec = {"ascent": Term(1.0), "retain_nll": Term(1.0)}

        def totals(self, forget_mask, retain_mask):
            return {"f": count(next_token_valid(forget_mask)), "r": count(next_token_valid(retain_mask))}

        def terms(self, model, adapter, forget_ids, forget_mask, retain_ids, retain_mask, totals):
            with adapter.active():
                f_lp, f_valid = token_logprobs(model(input_ids=forget_ids, attention_mask=forget_mask).logits,
                                               forget_ids, forget_mask)
                r_lp, r_valid = token_logprobs(model(input_ids=retain_ids, attention_mask=retain_mask).logits,
                                               retain_ids, retain_mask)
            return {"ascent": masked_mean(f_lp, f_valid, totals["f"]),
                    "retain_nll": -masked_mean(r_lp, r_valid, totals["r"])}

    return Ascent()


METHOD = Method(name="toyascent", summary="a test method with its own objective", build=lora.build,
                create=lora.create, objective=objective, trains=True, settings=lora.METHOD.settings,
                param_markers=lora.METHOD.param_markers)
'''


def test_a_method_with_its_own_objective_trains_records_and_builds(tiny_lm, demo_texts, demo_config, tmp_path,
                                                                  monkeypatch):
    from mmie.arms import build
    from mmie.jobs import train as train_job
    from mmie.model.loading import load_model

    pkg = tmp_path / "extra"
    pkg.mkdir()
    (pkg / "toyascent.py").write_text(TOY)
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(pkg)])
    registry.methods.cache_clear()
    try:
        data = tiny_train_files(tmp_path, tiny_lm, demo_texts, {"train": slice(0, 24), "dev": slice(200, 208)})
        splits = [str(data / role / f"{part}.jsonl") for role in ("forget", "retain") for part in ("train", "dev")]
        config = copy.deepcopy(demo_config)
        config["model"].update(source="local", path=str(tmp_path / "model"), device="cpu")
        train = {**config["arms"]["lora"]["train"], "lr": 2e-2, "max_steps": 4, "eval_every": 2, "batch_size": 4,
                 "max_length": 32, "heldout_items": 8, "max_retain_ppl_ratio": 1e6}
        train.pop("tune", None)
        config["arms"] = {"toy": {"method": "toyascent", "rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"],
                                  "train": train}}
        config["robustness"] = {"attacks": []}
        out = tmp_path / "checkpoints" / "toy" / "seed0"
        train_job.train(config, "toy", 0, None, splits, str(out))

        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["method"] == "toyascent" and manifest["objective"] == {}
        log = (out / "train_log.csv").read_text().splitlines()
        assert "ascent" in log[0] and "retain_nll" in log[0] and len(log) > 1   # the objective's terms, logged

        # the checkpoint's model card (the Hub's README.md): metadata, the base model, the data it saw
        import yaml

        card = (out / "README.md").read_text()
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["library_name"] == "peft" and "toyascent" in meta["tags"] and "base_model" not in meta
        assert f"the local model folder `{tmp_path / 'model'}`" in card and "More Information Needed" not in card
        assert all(digest in card for digest in manifest["provenance"]["data_hashes"].values())
        assert manifest["provenance"]["config_hash"] in card and "PeftModel.from_pretrained" in card

        loaded = load_model(config["model"], None)
        ids = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            before = loaded.model(input_ids=ids).logits.clone()
        arm = build("toy", config["arms"]["toy"], loaded, str(out))
        with torch.no_grad(), arm.active():
            after = arm.model(input_ids=ids).logits
        assert not torch.allclose(before, after)                 # the trained adapter is on
    finally:
        monkeypatch.undo()
        registry.methods.cache_clear()
        sys.modules.pop("mmie.arms.methods.toyascent", None)
