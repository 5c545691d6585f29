"""Job functions of rules/train.smk: train (one unlearning run of one trained arm and seed).
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
from pathlib import Path

from mmie import io, provenance
from mmie.jobs import JobConfig, job, split_files

log = logging.getLogger(__name__)


@job("model", "deterministic", "layers.force_layers", arm=True)
def train(config: JobConfig, arm_name: str, seed: int, model_dir: str | None, splits, out_dir: str,
          selection: str | None = None) -> None:
    """One (arm, seed) unlearning run on the forget/retain train and dev parts of ``splits`` (the
    rule's split files); writes the checkpoint directory atomically (temp dir + rename):
    adapter weights, manifest.json, train_log.csv. The resumable state lives in the sibling folder
    ``<out_dir>.resume/`` while training runs (a rerun after a kill continues from it) and is removed
    once the checkpoint is in place."""

    import pandas as pd

    from mmie import arms
    from mmie.arms import unlearn
    from mmie.arms.methods import method
    from mmie.model.generation import special_prefix
    from mmie.model.loading import load_model
    from mmie.sae.activations import model_fingerprint
    from mmie.seeding import seed_everything

    spec = arms.resolve_spec(config["arms"][arm_name])
    tcfg = spec["train"]
    out = Path(out_dir)
    sweep_killed_run(out)
    seed_everything(seed, config["deterministic"])
    lm = load_model(config["model"], model_dir)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    tok = lm.tokenizer
    data = split_files(splits)

    def enc(path: str, limit: int | None = None) -> list[list[int]]:
        rows = io.read_jsonl(path)[:limit]
        seqs = [(special_prefix(tok) + tok(r["text"], add_special_tokens=False)["input_ids"])[:tcfg["max_length"]]
                for r in rows]
        return [s for s in seqs if len(s) >= 2]

    forget, retain = enc(data["forget", "train"]), enc(data["retain", "train"])
    h_forget = enc(data["forget", "dev"], tcfg["heldout_items"])   # early stopping on dev, never test
    h_retain = enc(data["retain", "dev"], tcfg["heldout_items"])
    seed_everything(seed, config["deterministic"])  # adapter initialisation depends only on the seed
    selected = io.read_json(selection)["layers"] if selection else None
    adapter = arms.create_adapter(config, spec, lm.model, selected)
    n_trainable = sum(p.numel() for p in adapter.parameters())
    key = provenance.config_hash({
        "arm": arm_name, "seed": seed, "spec": spec, "layers": getattr(adapter, "layers", None),
        "deterministic": config["deterministic"], "model": model_fingerprint(lm.model),
        "data": [forget, retain, h_forget, h_retain]})
    resume = unlearn.ResumeStore(resume_dir(out), key)
    declared = method(spec["method"])   # a method's own objective (rmu), else train.objective
    objective = (declared.objective(spec, adapter, forget, tok.pad_token_id, special_prefix(tok), seed)
                 if declared.objective else None)
    result = unlearn.train(adapter.model, adapter, tok.pad_token_id, forget, retain, h_forget, h_retain, tcfg,
                           seed, desc=f"train {arm_name}/seed{seed}", resume=resume, objective=objective)
    with io.atomic_dir(out) as tmp:
        adapter.save(tmp)
        io.write_csv(tmp / "train_log.csv", pd.DataFrame(result.log_rows))
        io.write_json(tmp / "manifest.json", {
            "arm": arm_name, "seed": seed, "method": spec["method"], "spec": spec,
            "layers": getattr(adapter, "layers", None), "trainable_parameters": n_trainable,
            "train_texts": {"forget": len(forget), "retain": len(retain)}, "summary": result.summary,
            **({"objective": objective.record} if objective is not None else {}),
            "provenance": provenance.build(config, seed=seed, runtime=lm.runtime, rule="train",
                                           inputs=[data["forget", "train"], data["retain", "train"]],
                                           texts=adapter_texts(data, tcfg["heldout_items"])),
        })
    resume.clear()


def resume_dir(out_dir: Path) -> Path:
    """Where a training job keeps its resumable state: a sibling of its checkpoint folder."""
    return out_dir.with_name(out_dir.name + ".resume")


def sweep_killed_run(out_dir: Path) -> None:
    """Remove what a killed training job of this checkpoint left half-written: its temporary
    checkpoint folders (``.<name>.*`` beside it) and unfinished resume-state files. The resume
    state itself stays: it is what the rerun continues from."""
    from mmie.arms.unlearn import sweep_unfinished_writes

    for stale in io.sweep_stale(out_dir):
        log.warning("removed %s, the unfinished checkpoint folder of a killed run", stale)
    sweep_unfinished_writes(resume_dir(out_dir))


def adapter_texts(data: dict, heldout_items: int) -> dict[str, list[str]]:
    """The texts an unlearning run used: forget/retain train (fitted) and the first ``heldout_items``
    of forget/retain dev (early stopping); ``data``: split files by (role, part)."""
    return {f"{role}/{part}": [r["text"] for r in io.read_jsonl(data[role, part])[:limit]]
            for role in ("forget", "retain") for part, limit in (("train", None), ("dev", heldout_items))}
