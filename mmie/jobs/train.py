"""Job functions of rules/train.smk: train (one unlearning run of one trained arm and seed), and of
rules/tune.smk: tune (the arm's lr and retain scale chosen on dev data; it shares train's loading and loop).
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from mmie import io, provenance
from mmie.jobs import JobConfig, job, splits_by_role

log = logging.getLogger(__name__)


@job("model", "deterministic", "layers.force_layers", arm=True)
def train(config: JobConfig, arm_name: str, seed: int, model_dir: str | None, splits, out_dir: str,
          selection: str | None = None, tuned: str | None = None, chosen: str | None = None) -> None:
    """One (arm, seed) unlearning run on the forget/retain train and dev parts of ``splits`` (the
    rule's split files); writes the checkpoint directory atomically (temp dir + rename):
    adapter weights, manifest.json, train_log.csv. The resumable state lives in the sibling folder
    ``<out_dir>.resume/`` while training runs (a rerun after a kill continues from it) and is removed
    once the checkpoint is in place. ``tuned``: the arm's tune file (rule tune) when the arm has a
    ``train.tune`` grid: its chosen lr and retain scale replace the configured ones, for every seed.
    ``chosen``: at the tuning seed, the tune job's run of the chosen point (``tune`` keeps it): that run
    *is* this job's computation (the same seed, settings, data and loop; the fit re-seeds per point), so
    its kept state becomes the checkpoint instead of being trained a second time; the manifest says so
    (``trained_by``)."""
    from mmie import arms
    from mmie.seeding import seed_everything

    out = Path(out_dir)
    sweep_killed_run(out)
    spec, tuning = arms.resolve_spec(config["arms"][arm_name]), None
    if tuned:
        spec, tuning = tuned_spec(spec, arm_name, tuned)
    elif spec["train"].get("tune"):
        raise ValueError(f"arm {arm_name} has a train.tune grid but its train job was given no tune file; the "
                         f"train rule's input is miswired (rules/train.smk, tune_if_tuned)")
    data = splits_by_role(splits)
    texts = adapter_texts(data, spec["train"]["heldout_items"])
    inputs = [data["forget", "train"], data["retain", "train"], *([tuned] if tuned else [])]
    if chosen:
        kept = io.read_json(Path(chosen) / RUN_FILE)
        if kept["seed"] != seed or kept["spec"] != spec or kept["texts"] != provenance.texts_used(texts):
            raise ValueError(f"{chosen} is the tune job's run of arm {kept.get('arm')} at seed {kept['seed']}, not of "
                             f"{arm_name} at seed {seed} with the tuned settings and these texts; rerun rule tune")
        log.info("train %s/seed%d: the tune job trained exactly this run (%s): its kept state is the checkpoint",
                 arm_name, seed, chosen)
        write_checkpoint(out, config, seed, kept, inputs=[*inputs, chosen], texts=texts, tuning=tuning,
                         save=lambda tmp: shutil.copytree(chosen, tmp, dirs_exist_ok=True,
                                                          ignore=shutil.ignore_patterns(RUN_FILE)),
                         trained_by={"rule": "tune", "from": str(chosen)})
        return
    seed_everything(seed, config["deterministic"])
    run = _Setup(config, arm_name, model_dir, splits, selection)
    resume_key = {"spec": spec} if tuning else {}
    adapter, objective, result = run.fit(spec, seed, f"train {arm_name}/seed{seed}", resume_dir(out), resume_key)
    write_checkpoint(out, config, seed, run.record(arm_name, seed, spec, adapter, objective, result, texts),
                     inputs=inputs, texts=texts, tuning=tuning, save=adapter.save)
    assert run.store is not None   # fit was given a resume folder
    run.store.clear()


# the tune job's record of its chosen point's run, beside the adapter in tune/<arm>.chosen/
RUN_FILE = "run.json"


def write_checkpoint(out: Path, config: JobConfig, seed: int, kept: dict, *, inputs: list[str], texts: dict,
                     tuning: dict | None, save, trained_by: dict | None = None) -> None:
    """The checkpoint folder of one run, atomically: the adapter (``save(folder)``), train_log.csv,
    manifest.json and the Hub model card. ``kept``: the run's record (``_Setup.record``)."""
    import pandas as pd

    from mmie.report import model_card

    with io.atomic_dir(out) as tmp:
        save(tmp)
        io.write_csv(tmp / "train_log.csv", pd.DataFrame(kept["log_rows"]))
        manifest = {
            "arm": kept["arm"], "seed": seed, "method": kept["spec"]["method"], "spec": kept["spec"],
            **({"tuning": tuning} if tuning else {}),
            **({"trained_by": trained_by} if trained_by else {}),
            "layers": kept["layers"], "trainable_parameters": kept["trainable_parameters"],
            "train_texts": kept["train_texts"], "summary": kept["summary"],
            **({"objective": kept["objective"]} if kept["objective"] is not None else {}),
            "provenance": provenance.build(config, seed=seed, runtime=kept["runtime"], rule="train", inputs=inputs,
                                           texts=texts),
        }
        io.write_json(tmp / "manifest.json", manifest)
        # the Hub's model card, in place of the placeholder peft's save_pretrained writes
        io.write_text(tmp / "README.md", model_card.render(manifest, config["model"],
                                                          peft=(tmp / "adapter_config.json").is_file()))


class _Setup:
    """What a train or tune job loads once: the model (frozen), the arm's resolved settings, the
    encoded forget/retain train texts and the first ``heldout_items`` forget/retain dev texts (early
    stopping and tuning: dev, never test or holdout), the selected layers."""

    def __init__(self, config: JobConfig, arm_name: str, model_dir: str | None, splits, selection: str | None):
        from mmie import arms
        from mmie.model.generation import special_prefix
        from mmie.model.loading import load_model

        self.config, self.arm_name = config, arm_name
        self.spec = arms.resolve_spec(config["arms"][arm_name])
        tcfg = self.spec["train"]
        self.lm = load_model(config["model"], model_dir)
        for p in self.lm.model.parameters():
            p.requires_grad_(False)
        tok = self.tok = self.lm.tokenizer
        self.prefix = special_prefix(tok)
        self.data = splits_by_role(splits)

        def enc(path: str, limit: int | None = None) -> list[list[int]]:
            rows = io.read_jsonl(path)[:limit]
            seqs = [(self.prefix + tok(r["text"], add_special_tokens=False)["input_ids"])[:tcfg["max_length"]]
                    for r in rows]
            return [s for s in seqs if len(s) >= 2]

        self.forget, self.retain = enc(self.data["forget", "train"]), enc(self.data["retain", "train"])
        self.h_forget = enc(self.data["forget", "dev"], tcfg["heldout_items"])   # dev, never test
        self.h_retain = enc(self.data["retain", "dev"], tcfg["heldout_items"])
        self.selected = io.read_json(selection)["layers"] if selection else None

    def fit(self, spec: dict, seed: int, desc: str, resume: Path | None, extra_key: dict | None = None,
            model=None):
        """Seed, create a fresh adapter of ``spec`` on ``model`` (default: the loaded model) and run
        the training loop (mmie.arms.unlearn.train); returns the adapter, the method's own objective
        (or None) and the loop's result. ``resume``: the folder of the resumable state (None: none)."""
        from mmie import arms
        from mmie.arms import unlearn
        from mmie.arms.fingerprint import model_fingerprint
        from mmie.arms.methods import method
        from mmie.arms.resume import ResumeStore
        from mmie.seeding import seed_everything

        model = self.lm.model if model is None else model
        seed_everything(seed, self.config["deterministic"])  # adapter initialisation depends only on the seed
        adapter = arms.create_adapter(self.config, spec, model, self.selected)
        store = self.store = None
        if resume is not None:
            # a tuned run's key also holds its chosen values (an untuned run's key is that of before)
            key = provenance.config_hash({
                "arm": self.arm_name, "seed": seed, "spec": self.spec, "layers": getattr(adapter, "layers", None),
                "deterministic": self.config["deterministic"], "model": model_fingerprint(model),
                "data": [self.forget, self.retain, self.h_forget, self.h_retain], **(extra_key or {})})
            store = self.store = ResumeStore(resume, key)
        declared = method(spec["method"])   # a method's own objective (rmu), else train.objective
        objective = (declared.objective(spec, adapter, self.forget, self.tok.pad_token_id, self.prefix, seed)
                     if declared.objective else None)
        result = unlearn.train(adapter.model, adapter, self.tok.pad_token_id, self.forget, self.retain,
                               self.h_forget, self.h_retain, spec["train"], seed, desc=desc, resume=store,
                               objective=objective)
        return adapter, objective, result

    def record(self, arm_name: str, seed: int, spec: dict, adapter, objective, result, texts: dict) -> dict:
        """What a checkpoint's manifest says of a finished run (``write_checkpoint``), as plain JSON: the
        tune job keeps it beside its chosen point's adapter."""
        return {"arm": arm_name, "seed": seed, "spec": spec, "layers": getattr(adapter, "layers", None),
                "trainable_parameters": sum(p.numel() for p in adapter.parameters()),
                "train_texts": {"forget": len(self.forget), "retain": len(self.retain)}, "summary": result.summary,
                "log_rows": result.log_rows, "objective": dict(objective.record) if objective is not None else None,
                "runtime": self.lm.runtime, "texts": provenance.texts_used(texts)}


@job("model", "deterministic", "layers.force_layers", arm=True)
def tune(config: JobConfig, arm_name: str, seed: int, model_dir: str | None, splits, out: str,
         selection: str | None = None, chosen_out: str | None = None) -> None:
    """Choose a trained arm's lr and retain scale from its ``train.tune`` grid on dev data
    (mmie.arms.tuning): every grid point is trained at ``seed`` (the study's first) on the forget/retain
    train texts with the train job's loop and early stopping, and scored on the first
    ``heldout_items`` forget/retain dev texts (the loop's held-out figures of the kept state). Writes
    ``out`` (JSON): the rule, the grid, every point's dev figures, the choice, provenance. ``splits``:
    forget/retain train and dev files only (the rule's input); no test or holdout text is read. Fails
    (NoGridPointWithinBudget, naming the keys) when no point stays within the retain budget.
    ``chosen_out``: a folder for the chosen point's run (its kept adapter and ``run.json``), which the
    train job at this seed takes as its checkpoint instead of training the same run again."""
    import copy
    import gc

    from mmie.arms import tuning, unlearn
    from mmie.seeding import seed_everything

    seed_everything(seed, config["deterministic"])
    run = _Setup(config, arm_name, model_dir, splits, selection)
    spec, data = run.spec, run.data
    max_ratio = spec["train"]["max_retain_ppl_ratio"]
    texts = adapter_texts(data, spec["train"]["heldout_items"])
    runs = None   # each finished point's run, until the choice: a temporary folder beside chosen_out
    if chosen_out:
        stash = Path(chosen_out).with_name(f"{arm_name}.points")
        stash.parent.mkdir(parents=True, exist_ok=True)
        io.sweep_stale(stash)   # what a killed tune job left
        runs = Path(tempfile.mkdtemp(dir=stash.parent, prefix=f".{stash.name}."))
    points = []
    for i, point in enumerate(tuning.grid(spec)):
        values, changed = tuning.apply(spec, point["lr"], point["retain_scale"])
        desc = f"tune {arm_name} lr {point['lr']:g} retain_scale {point['retain_scale']:g}"
        model = copy.deepcopy(run.lm.model)   # a fresh copy per point: an adapter changes the model it sits on
        row = {**point, "settings": changed}
        try:
            adapter, objective, result = run.fit(values, seed, desc, None, model=model)
        except (unlearn.NoStateWithinBudget, unlearn.NonFiniteError) as err:
            row.update(status=type(err).__name__, message=str(err))
            log.info("%s: %s", desc, err)
        else:
            summary = result.summary
            kept = next(r for r in result.log_rows if r["step"] == summary["kept_step"])
            row.update(status="ok", kept_step=summary["kept_step"], steps_run=summary["steps_run"],
                       stopped=summary["stopped"], retain_ppl=kept["retain_ppl"],
                       retain_ppl_ratio=kept["retain_ppl"] / summary["base_retain_ppl"],
                       forget_nll=kept["forget_nll"], forget_nll_increase=kept["forget_nll"] - summary["base_forget_nll"],
                       base_retain_ppl=summary["base_retain_ppl"], base_forget_nll=summary["base_forget_nll"],
                       train_seconds=summary["train_seconds"])
            log.info("%s: kept step %d, dev retain ppl ratio %.3f, forget dev NLL increase %.4f", desc,
                     row["kept_step"], row["retain_ppl_ratio"], row["forget_nll_increase"])
            if runs is not None:
                (runs / str(i)).mkdir()   # a method's save writes into an existing folder (as atomic_dir's)
                adapter.save(runs / str(i))
                io.write_json(runs / str(i) / RUN_FILE, run.record(arm_name, seed, values, adapter, objective,
                                                                   result, texts))
            del adapter
        row["within_budget"] = tuning.within_budget(row, max_ratio)
        points.append(row)
        del model
        gc.collect()
    tune_cfg = spec["train"]["tune"]
    record = {"arm": arm_name, "method": spec["method"], "seed": seed,
              "grid": {"lr": sorted({p["lr"] for p in points}), "retain_scale": sorted({p["retain_scale"] for p in points}),
                       "configured": tune_cfg},
              "retain_scale_multiplies": list(tuning.retain_keys(spec)),
              "rule": tuning.RULE, "measure": "forget_nll_increase", "max_retain_ppl_ratio": max_ratio,
              "dev_texts": {"forget": len(run.h_forget), "retain": len(run.h_retain)},
              "train_texts": {"forget": len(run.forget), "retain": len(run.retain)},
              "points": points}
    try:
        chosen = tuning.choose(points, max_ratio, arm_name)   # no point within budget: fails, naming the keys
        if runs is not None and chosen_out:
            with io.atomic_dir(chosen_out) as tmp:
                shutil.copytree(runs / str(points.index(chosen)), tmp, dirs_exist_ok=True)
    finally:
        if runs is not None:
            shutil.rmtree(runs)
    record["chosen"] = {"lr": chosen["lr"], "retain_scale": chosen["retain_scale"], "settings": chosen["settings"],
                        "forget_nll_increase": chosen["forget_nll_increase"],
                        "retain_ppl_ratio": chosen["retain_ppl_ratio"]}
    record["provenance"] = provenance.build(
        config, seed=seed, runtime=run.lm.runtime, rule="tune",
        inputs=[data[role, part] for role in ("forget", "retain") for part in ("train", "dev")],
        texts=texts)
    io.write_json(out, record)
    log.info("tune %s: chose lr %g, retain_scale %g (%d grid points)", arm_name, chosen["lr"], chosen["retain_scale"],
             len(points))


def tuned_spec(spec: dict, arm_name: str, path: str) -> tuple[dict, dict]:
    """The arm's resolved spec with the tune file's chosen values in place, and the manifest's
    ``tuning`` record (the values, the keys they replaced, where they came from)."""
    from mmie.arms import tuning

    record = io.read_json(path)
    if record.get("arm") != arm_name or "chosen" not in record:
        raise ValueError(f"{path} is not a tune result of arm {arm_name} (arm {record.get('arm')!r}); rerun rule tune")
    if record["grid"]["configured"] != spec["train"].get("tune"):
        raise ValueError(f"{path} was tuned on another grid ({record['grid']['configured']}) than "
                         f"arms.{arm_name}.train.tune ({spec['train'].get('tune')}); rerun rule tune")
    chosen = record["chosen"]
    out, changed = tuning.apply(spec, chosen["lr"], chosen["retain_scale"])
    return out, {"from": str(path), "rule": record["rule"], "tuned_at_seed": record["seed"], "lr": chosen["lr"],
                 "retain_scale": chosen["retain_scale"], "overrides": changed,
                 "configured": {k: (spec["train"] if k.startswith("train.") else spec)[k.split(".")[-1]]
                                for k in changed}}


def resume_dir(out_dir: Path) -> Path:
    """Where a training job keeps its resumable state: a sibling of its checkpoint folder."""
    return out_dir.with_name(out_dir.name + ".resume")


def sweep_killed_run(out_dir: Path) -> None:
    """Remove what a killed training job of this checkpoint left half-written: its temporary
    checkpoint folders (``.<name>.*`` beside it) and unfinished resume-state files. The resume
    state itself stays: it is what the rerun continues from."""
    from mmie.arms.resume import sweep_unfinished_writes

    for stale in io.sweep_stale(out_dir):
        log.warning("removed %s, the unfinished checkpoint folder of a killed run", stale)
    sweep_unfinished_writes(resume_dir(out_dir))


def adapter_texts(data: dict, heldout_items: int) -> dict[str, list[str]]:
    """The texts an unlearning run used: forget/retain train (fitted) and the first ``heldout_items``
    of forget/retain dev (early stopping); ``data``: split files by (role, part)."""
    return {f"{role}/{part}": [r["text"] for r in io.read_jsonl(data[role, part])[:limit]]
            for role in ("forget", "retain") for part, limit in (("train", None), ("dev", heldout_items))}
