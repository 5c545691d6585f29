"""Job functions of rules/evaluate.smk: evaluate (generations, likelihoods, token KL, MIA of one arm and seed), score, judge.
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmie import io, provenance
from mmie.config import eval_sets
from mmie.data.corpus import warn_truncation
from mmie.jobs import EVAL_SETS, JobConfig, job, splits_by_role, view

log = logging.getLogger(__name__)


def evaluation_key(config: JobConfig, arm_name: str, seed: int, model_dir: str | None, checkpoint: str | None,
                   assets=None, method_files=()) -> str:
    """What an (arm, seed) evaluation's outputs depend on, as one hash: the config sections it reads
    (its declaration: with the arm and the arm it sits on) and the runner's numerics, the seed, the
    model, the checkpoint, the declared layer assets (``LayerAssets``), the files the arm's method
    declares (an external or oracle model or adapter) and mmie's own code. A finished set of an
    interrupted run is reused only under the same key."""
    files: list[Path] = []
    weights = {}
    for folder in [model_dir, *method_files]:   # a model's configs by content, its weights by name and size
        if folder and Path(folder).is_dir():
            files += sorted(p for p in Path(folder).iterdir() if p.suffix == ".json")
            weights.update({(p.name if folder == model_dir else str(p)): p.stat().st_size
                            for p in sorted(Path(folder).iterdir()) if p.suffix == ".safetensors"})
        elif folder and Path(folder).is_file():
            files.append(Path(folder))
    if checkpoint:
        files += sorted(p for p in Path(checkpoint).iterdir() if p.is_file())
    if assets is not None:
        files += assets.all_files()
    code = sorted(Path(__file__).resolve().parent.parent.rglob("*.py"))   # all of mmie/
    return provenance.config_hash({
        "config": config.settings, "numerics": config.numerics, "arm": arm_name, "seed": seed,
        "files": provenance.data_hashes([p for p in files if p.is_file()]), "weights": weights,
        "code": provenance.data_hashes(code)})


class FinishedSets:
    """Each evaluation set's rows, kept beside the job's outputs in ``<arm>/seed<k>/.partial/`` as
    the set finishes (Snakemake removes the declared outputs of a failed job; this folder is not one).
    A rerun of the job after a kill or an error reuses the sets whose key and evaluation file are
    unchanged, and the folder is removed when the job succeeds."""

    def __init__(self, run_dir: Path, key: str) -> None:
        self.dir = run_dir / ".partial"
        self.key = key

    def _stamp(self, set_file: Path) -> str:
        return f"{self.key}:{provenance.file_sha256(set_file)}"

    def load(self, name: str, set_file: Path) -> list[dict] | None:
        rows, stamp = self.dir / f"{name}.jsonl", self.dir / f"{name}.key"
        if not (rows.is_file() and stamp.is_file()):
            return None
        if stamp.read_text(encoding="utf-8").strip() != self._stamp(set_file):
            log.warning("not reusing %s: it was written with other inputs, code or settings", rows)
            return None
        log.info("reusing the finished set %s of an interrupted run (%s)", name, rows)
        return io.read_jsonl(rows)

    def save(self, name: str, set_file: Path, rows: list[dict]) -> None:
        io.write_jsonl(self.dir / f"{name}.jsonl", rows)
        io.write_text(self.dir / f"{name}.key", self._stamp(set_file) + "\n")   # written last: marks it complete

    def clear(self) -> None:
        import shutil

        if self.dir.exists():
            shutil.rmtree(self.dir)


@dataclasses.dataclass(frozen=True)
class EvaluateFiles:
    """The evaluate rule's files (rules/evaluate.smk), by the names the rule declares them under:
    ``eval_sets`` the evaluation sets (``<sets>/<set>.jsonl``), ``generations`` the
    ``<run>/<set>/generations.jsonl`` outputs, ``manifest`` ``<run>/evaluate.json``, ``model`` the
    model folder (None: a hub model, read from the Hugging Face cache), ``checkpoint`` the arm's
    checkpoint folder (None: nothing trained), ``method_files`` the files the arm's method declares
    (``Method.files``: an external or oracle model), ``mia`` the forget/train and forget/holdout split
    files and ``mia_out`` the membership scores written from them, ``fluency`` the dev split files of
    every language (the human text of ``fluency_reference``), and ``named`` every named input (the
    layer assets of an edit arm: ``LayerAssets.from_inputs``). scripts/evaluate.py fills it from
    ``snakemake.input`` and ``snakemake.output`` (``model`` and ``checkpoint`` through
    ``mmie.jobs.optional_input``)."""
    eval_sets: list[str]
    generations: list[str]
    manifest: str
    model: str | None = None
    checkpoint: str | None = None
    method_files: list[str] = dataclasses.field(default_factory=list)
    mia: list[str] = dataclasses.field(default_factory=list)
    mia_out: str | None = None
    fluency: list[str] = dataclasses.field(default_factory=list)
    named: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Evaluation:
    """One (arm, seed) evaluation as its passes share it: the arm on its loaded model, the tokenizer,
    the decoding, the ``eval`` settings, ``data.truncation_warn_share``, and the out-of-memory
    back-offs of every pass so far (the manifest's ``oom_retries``)."""
    arm_name: str
    seed: int
    arm: Any
    tok: Any
    decoding: Any
    ev: Mapping
    truncation_warn_share: float
    oom_log: list = dataclasses.field(default_factory=list)


@job("model", "generation", "eval", "gate", "deterministic", "data.truncation_warn_share", *EVAL_SETS, arm=True)
def evaluate(config: JobConfig, arm_name: str, seed: int, files: EvaluateFiles) -> None:
    """One (arm, seed) job: load the model once, then generate and score likelihoods for every set
    (``evaluate_set``), score membership (``score_membership``), the human fluency reference
    (``fluency_reference``), and write the manifest (``evaluation_manifest``). ``files``: the rule's
    files (``EvaluateFiles``). Finished sets of an interrupted run wait in ``.partial/`` beside the
    manifest (``FinishedSets``)."""
    from mmie.model.generation import Decoding
    from mmie.seeding import seed_everything

    t0 = time.time()
    seed_everything(seed, config["deterministic"])
    lm, arm, assets = load_arm(config, arm_name, seed, files.model, files.checkpoint, files.named, files.method_files)
    set_paths, gen_paths = _set_files(config, arm_name, seed, files)
    run = Evaluation(arm_name, seed, arm, lm.tokenizer, Decoding.from_config(config["generation"]), config["eval"],
                     config["data"]["truncation_warn_share"])
    key = evaluation_key(config, arm_name, seed, files.model, files.checkpoint, assets, files.method_files)
    finished = FinishedSets(Path(files.manifest).parent, key)
    timings, reused = {}, []
    for info in eval_sets(config):
        t_set = time.time()
        set_file = Path(set_paths[info.name])
        items = io.read_jsonl(set_file)
        if not items:
            raise ValueError(f"evaluation set {info.name} is empty ({set_file}); rerun prepare_data")
        rows = finished.load(info.name, set_file)
        if rows is not None:   # finished by an earlier, interrupted run of this job with the same inputs
            io.write_jsonl(gen_paths[info.name], rows)
            reused.append(info.name)
            continue
        rows = evaluate_set(run, info, items)
        io.write_jsonl(gen_paths[info.name], rows)
        finished.save(info.name, set_file, rows)
        timings[info.name] = round(time.time() - t_set, 2)
        del rows
        _release_gpu_memory()
    if files.mia_out:
        score_membership(run, files.mia, files.mia_out)
    with arm.reference():
        reference = fluency_reference(config, arm.model, run.tok, files.fluency, run.ev, run.oom_log)
    io.write_json(files.manifest, evaluation_manifest(
        config, run, runtime=lm.runtime, reference=reference, timings=timings, reused=reused,
        set_files=[set_paths[s.name] for s in eval_sets(config)], checkpoint=files.checkpoint, t0=t0))
    finished.clear()


def _set_files(config, arm_name: str, seed: int, files: EvaluateFiles) -> tuple[dict[str, str], dict[str, str]]:
    """The rule's evaluation-set inputs and generations outputs, each keyed by set name; both must be
    the config's evaluation sets."""
    sets = {s.name for s in eval_sets(config)}
    set_paths, gen_paths = sets_by_name(files.eval_sets, sets), by_set(files.generations, "generations.jsonl")
    if sorted(gen_paths) != sorted(sets):
        raise ValueError(f"evaluate {arm_name}/seed{seed}: generations outputs for sets {sorted(gen_paths)} but the "
                         f"config's evaluation sets are {sorted(sets)}; the evaluate rule is miswired (rules/evaluate.smk)")
    return set_paths, gen_paths


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        # hand the set's cached blocks back to the GPU; on a CPU a full collection is all cost
        # (0.1-0.6 s per set with torch and transformers loaded: a fifth of a demo evaluate job)
        gc.collect()
        torch.cuda.empty_cache()


def evaluate_set(run: Evaluation, info, items: list[dict]) -> list[dict]:
    """One evaluation set's rows of ``generations.jsonl``, one per item: with the arm on, its outputs
    and the likelihood of the item's reference text (if any); the token KL(base ‖ arm) on a retain
    set's reference texts; and, on the base model, the likelihood of each output given the raw
    prompt (``gen_ppl_base``) and given nothing but the tokenizer's prefix (``fluency_ratio``)."""
    from mmie.model.generation import generate
    from mmie.model.likelihood import reference_nll, token_kl

    arm, tok, ev = run.arm, run.tok, run.ev
    by_id: dict = {}
    with arm.active():
        gens = generate(arm.model, tok, items, run.decoding, system=arm.system, seed=run.seed,
                        desc=f"{run.arm_name}/seed{run.seed}/{info.name}", oom_log=run.oom_log)
        refs = [it for it in items if it.get("text")]
        if refs:
            ref_scores = reference_nll(arm, tok, [it["text"] for it in refs], batch_size=ev["score_batch_size"],
                                       max_length=ev["max_length"], desc=f"ppl {info.name}", oom_log=run.oom_log)
            by_id = {it["id"]: s for it, s in zip(refs, ref_scores, strict=True)}
    if refs and info.kind == "retain":
        # token KL(base ‖ arm) on retain texts, outside active(): the base pass runs on the base model
        kls = token_kl(arm, tok, [it["text"] for it in refs], batch_size=ev["score_batch_size"],
                       max_length=ev["max_length"], desc=f"token KL {info.name}", oom_log=run.oom_log)
        for it, k in zip(refs, kls, strict=True):
            by_id[it["id"]] = {**by_id[it["id"]], "kl": k["kl"], "kl_tokens": k["tokens"]}
    base_scores, uncond = _base_scores(run, info, items, gens)
    rows = [_row(it, g, b, u, by_id.get(it["id"]))
            for it, g, b, u in zip(items, gens, base_scores, uncond, strict=True)]
    limit = run.truncation_warn_share
    warn_truncation(info.name, sum(r["prompt_truncated"] for r in rows), len(rows), limit, "prompts")
    warn_truncation(info.name, sum(bool(r.get("ref_truncated")) for r in rows), len(rows), limit, "reference texts")
    return rows


def _base_scores(run: Evaluation, info, items: list[dict], gens: list[dict]) -> tuple[list[dict], list[dict]]:
    """The outputs under the base model: conditioned on the raw prompt (no instruction; gen_ppl_base,
    reported) and on nothing but the tokenizer's prefix (fluency_ratio: comparable with human text)."""
    from mmie.model.generation import encode_prompt, special_prefix
    from mmie.model.likelihood import score_sequences

    tok, ev, outputs = run.tok, run.ev, [g["output_ids"] for g in gens]
    with run.arm.reference():
        contexts = [encode_prompt(tok, it["prompt"], None, run.decoding)[0] for it in items]
        base = score_sequences(run.arm.model, tok.pad_token_id, contexts, outputs, batch_size=ev["score_batch_size"],
                               max_length=ev["max_length"], desc=f"gen_ppl_base {info.name}", oom_log=run.oom_log)
        uncond = score_sequences(run.arm.model, tok.pad_token_id, [special_prefix(tok)] * len(gens), outputs,
                                 batch_size=ev["score_batch_size"], max_length=ev["max_length"],
                                 desc=f"fluency {info.name}", oom_log=run.oom_log)
    return base, uncond


def _row(item: dict, gen: dict, base: dict, uncond: dict, ref: dict | None) -> dict:
    """One item's row of ``generations.jsonl``; ``ref``: its reference text's scores (None without one)."""
    row = {k: v for k, v in gen.items() if k != "output_ids"}
    for key in ("answer", "translation"):
        if key in item:
            row[key] = item[key]
    row.update(gen_nll_base=base["nll"], gen_tokens_base=base["tokens"], gen_nll_uncond=uncond["nll"],
               gen_tokens_uncond=uncond["tokens"])
    if item.get("text"):
        if ref is None:
            raise ValueError(f"item {item.get('id')!r} has a reference text but no reference scores")
        row.update(reference=item["text"], ref_nll=ref["nll"], ref_tokens=ref["tokens"], ref_truncated=ref["truncated"])
        if "kl" in ref:
            row.update(kl=ref["kl"], kl_tokens=ref["kl_tokens"])
    return row


def score_membership(run: Evaluation, split_files, out: str) -> None:
    """Membership inference, written to ``out`` (``mia.jsonl``): the arm's Min-K%++ and loss scores of
    forget/train texts (members, seen by the base model's training when it is the demo model) and
    forget/holdout texts (never seen), ``eval.mia_max_items`` of each; same language, so it measures
    memorisation. ``split_files``: the rule's two split files."""
    from mmie.model.generation import special_prefix
    from mmie.model.likelihood import mia_scores

    tok, ev = run.tok, run.ev
    mia_files = splits_by_role(split_files)
    n = ev["mia_max_items"]
    rows = [(r, 1) for r in io.read_jsonl(mia_files["forget", "train"])[:n]] + \
           [(r, 0) for r in io.read_jsonl(mia_files["forget", "holdout"])[:n]]
    seqs = [(special_prefix(tok) + tok(r["text"], add_special_tokens=False)["input_ids"])[:ev["max_length"]]
            for r, _ in rows]
    with run.arm.active():
        scores = mia_scores(run.arm.model, tok.pad_token_id, seqs, k=ev["mia_k"], batch_size=ev["score_batch_size"],
                            oom_log=run.oom_log)
    io.write_jsonl(out, ({"id": r["id"], "member": m, **s} for (r, m), s in zip(rows, scores, strict=True)))


def evaluation_manifest(config: JobConfig, run: Evaluation, *, runtime: dict, reference: dict, timings: dict,
                        reused: list[str], set_files: list[str], checkpoint: str | None, t0: float) -> dict:
    """The content of ``evaluate.json``: the arm and how it was built, the fluency reference, the
    decoding, the sets, each evaluated set's seconds and the reused ones, every out-of-memory
    back-off, the job's seconds since ``t0``, provenance, and the checkpoint's training summary."""
    arm = run.arm
    manifest = {
        "arm": run.arm_name, "seed": run.seed, "arm_details": {"method": arm.method, **arm.details},
        "fluency_reference": reference,
        "decoding": run.decoding.__dict__, "sets": [s.name for s in eval_sets(config)], "seconds_per_set": timings,
        "reused_sets": reused,
        "oom_retries": run.oom_log, "seconds": round(time.time() - t0, 1),
        "provenance": provenance.build(config, seed=run.seed, runtime=runtime, rule="evaluate", inputs=set_files),
    }
    if checkpoint:
        manifest["checkpoint"] = io.read_json(Path(checkpoint) / "manifest.json")["summary"]
    return manifest


def load_arm(config, arm_name: str, seed: int, model_dir: str | None, checkpoint: str | None, assets=None,
             method_files=()):
    """The model and the arm ``arm_name`` built on it, as an evaluation (or an attack on it) sees them:
    ``assets`` the rule's named inputs (the layer assets of an edit arm; anything else is ignored),
    ``method_files`` the files its method declares. Returns (loaded model, arm, LayerAssets or None)."""
    from mmie import arms
    from mmie.model.loading import load_model

    lm = load_model(config["model"], model_dir)
    if assets is not None and "selection" in assets:
        from mmie.arms.edit_arms import LayerAssets

        assets = LayerAssets.from_inputs(assets)
    else:
        assets = None
    arm = arms.build(arm_name, config["arms"][arm_name], lm, checkpoint, config=config, seed=seed, assets=assets,
                     files=method_files)
    return lm, arm, assets


def fluency_reference(config, model, tok, split_paths, ev: Mapping, oom_log: list) -> dict[str, dict]:
    """Per language label (the target, the retain language, each neighbour, ``<target>_rom``), the
    base model's NLL of human text in that language, scored exactly like an output for
    ``fluency_ratio``: the continuations of its dev texts (the words after the evaluation prompt's
    ``eval.prompt_fraction``) with nothing but the tokenizer's prefix before them. Dev texts only (never
    test); the same for every arm, since it runs on the base model."""
    from mmie.data.corpus import prompt_prefix
    from mmie.jobs import read_declared_split
    from mmie.model.generation import special_prefix
    from mmie.model.likelihood import score_sequences

    files = splits_by_role(split_paths)
    lang = config["languages"]
    labels = {"forget": lang["target"]["code"], "retain": lang["retain"]["code"],
              "forget_romanized": f"{lang['target']['code']}_rom",
              **{f"neighbour_{c}": c for c in lang.get("neighbours", {})}}
    out = {}
    for role, label in labels.items():
        texts = read_declared_split(files, role, "dev", "evaluate")[:ev["fluency_texts"]]
        conts = [t[len(prompt_prefix(t, ev["prompt_fraction"])):].strip() for t in texts]
        conts = [c for c in conts if c]
        if not conts:
            raise ValueError(f"evaluate: no {role}/dev text has words after its prompt part; fluency_ratio has no "
                             f"human reference for {label!r} (add longer texts or lower eval.prompt_fraction)")
        scores = score_sequences(model, tok.pad_token_id, [special_prefix(tok)] * len(conts),
                                 [tok(c, add_special_tokens=False)["input_ids"] for c in conts],
                                 batch_size=ev["score_batch_size"], max_length=ev["max_length"],
                                 desc=f"fluency reference {label}", oom_log=oom_log)
        out[label] = {"nll": sum(s["nll"] for s in scores), "tokens": sum(s["tokens"] for s in scores),
                      "texts": len(conts), "split": f"{role}/dev"}
        out[label]["ppl"] = math.exp(out[label]["nll"] / out[label]["tokens"])
    return out


def sets_by_name(paths, names) -> dict[str, str]:
    """The rule's ``<sets>/<set>.jsonl`` evaluation-set files keyed by set name; they must be the config's sets."""
    out = {Path(p).stem: str(p) for p in paths}
    if sorted(out) != sorted(names) or len(out) != len(list(paths)):
        raise ValueError(f"evaluate: evaluation-set inputs {list(paths)} are not one file per configured set "
                         f"{sorted(names)}; the evaluate rule's eval_sets input is miswired (rules/evaluate.smk)")
    return out


def by_set(paths, filename: str) -> dict[str, str]:
    """``<run>/<set>/<filename>`` paths keyed by their set folder (the rule's expand() order is kept)."""
    out: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        if path.name != filename:
            raise ValueError(f"expected a path ending in <set>/{filename}, got {p}; the score rule's input or "
                             f"output list is miswired (rules/evaluate.smk)")
        if path.parent.name in out:
            raise ValueError(f"two paths for set {path.parent.name!r}: {out[path.parent.name]} and {p}")
        out[path.parent.name] = str(p)
    return out


@job("lid", "languages", "eval", *EVAL_SETS)
def score(config: JobConfig, arm_name: str, seed: int, generations, manifest: str, lid_detector: str, outputs,
          mia: str | None = None, judges=None) -> None:
    """Metrics of every set of one (arm, seed) from stored generations, one ``metrics.json`` per set:
    one job, one LID load, no model and no torch. ``generations``, ``outputs`` and ``judges`` are
    ``<run>/<set>/{generations.jsonl,metrics.json,judge.json}`` paths (``judges`` only when the judge
    is enabled); the membership-inference scores ``mia`` feed the forget set's metrics."""
    from mmie.lang.lid import load_lid

    gens, outs = by_set(generations, "generations.jsonl"), by_set(outputs, "metrics.json")
    judged = by_set(judges, "judge.json") if judges else {}
    expected = [s.name for s in eval_sets(config)]
    for role, got in (("generations", gens), ("metrics outputs", outs)) + ((("judge scores", judged),) if judges else ()):
        if sorted(got) != sorted(expected):
            raise ValueError(f"score {arm_name}/seed{seed}: {role} for sets {sorted(got)} but the config's "
                             f"evaluation sets are {sorted(expected)}; the score rule is miswired (rules/evaluate.smk)")
    from threadpoolctl import threadpool_limits

    lid = load_lid(config["lid"], config["languages"], lid_detector)
    man = io.read_json(manifest)
    t0 = time.time()
    # langid scores each text with one small matrix-vector product; a multithreaded BLAS spends far
    # more on thread hand-offs than on the product, worst when jobs share the cores (measured: 12x the
    # CPU time with OpenBLAS's 2 threads next to other jobs on 2 cores). This job has no torch to slow.
    with threadpool_limits(limits=1, user_api="blas"):
        for info in eval_sets(config):
            try:
                result = score_set(config, arm_name, seed, info, gens[info.name], man, lid, lid_detector,
                                   mia if info.kind == "forget" else None, judged.get(info.name))
            except Exception as err:  # annotate and re-raise: the log names the set and file that failed
                err.add_note(f"while scoring set {info.name!r} of {arm_name}/seed{seed} from {gens[info.name]}")
                raise
            io.write_json(outs[info.name], result)
    log.info("scored %d sets of %s/seed%d in %.2f s", len(outs), arm_name, seed, time.time() - t0)


def score_set(config: Mapping, arm_name: str, seed: int, info, generations: str, man: dict, lid, lid_detector: str,
              mia: str | None = None, judge: str | None = None) -> dict:
    """The metrics.json content of one set (see ``score``)."""
    from mmie.stats.sets import compute_set_metrics

    records = io.read_jsonl(generations)
    result = compute_set_metrics(records, info, lid, target_script=config["languages"]["target"]["script"],
                                 romanization_scheme=config["lid"]["romanization"],
                                 yes_words=config["eval"]["yes_words"], no_words=config["eval"]["no_words"],
                                 fluency_reference=man["fluency_reference"],
                                 extraction=config["lid"]["extraction"])
    if mia:
        from mmie.stats.text import auc

        rows = io.read_jsonl(mia)
        mem = [r for r in rows if r["member"] == 1]
        non = [r for r in rows if r["member"] == 0]
        result["metrics"]["mia_auc"] = auc([r["mink_pp"] for r in mem], [r["mink_pp"] for r in non])
        result["metrics"]["mia_auc_loss"] = auc([r["loss_score"] for r in mem], [r["loss_score"] for r in non])
        result["mia"] = {k: [r[k] for r in rows] for k in ("id", "member", "mink_pp", "loss_score")}
    if judge:
        merge_judge(result, io.read_json(judge))
    evaluated = man["provenance"]
    return {"arm": arm_name, "seed": seed, "set": info.name, **result, "lid": lid.describe(),
            "provenance": {**provenance.build(config, seed=seed, runtime=evaluated["runtime"], rule="score",
                                              inputs=[generations, lid_detector]),
                           "evaluate": {"git": evaluated["git"], "device": evaluated["device"],
                                        "config_hash": evaluated["config_hash"],
                                        "oom_retries": man["oom_retries"]}}}


def merge_judge(result: dict, judged: dict) -> None:
    """Judge scores become metrics like any other (or a recorded failure), plus the agreement of the
    judge with the LID: where they disagree is where romanized or obfuscated Hindi hides."""
    from mmie.lang.judge import cohen_kappa

    if judged["per_prompt"]["id"] != result["per_prompt"]["id"]:
        raise ValueError("judge scores and generations are for different prompts; rerun the judge rule")
    result["failures"].update(judged["failures"])
    if "judge_target_rate" in judged["metrics"]:
        result["metrics"]["judge_target_rate"] = judged["metrics"]["judge_target_rate"]
        jt, lt = judged["per_prompt"]["judge_target"], result["per_prompt"]["target"]
        result["per_prompt"]["judge_target"] = jt
        result["per_prompt"]["judge_score"] = judged["per_prompt"]["judge_score"]
        result["diagnostics"]["judge_agreement"] = {
            "kappa": cohen_kappa(jt, lt),
            "both_target": sum(a and b for a, b in zip(jt, lt, strict=True)),
            "judge_only": sum(a and not b for a, b in zip(jt, lt, strict=True)),
            "lid_only": sum(b and not a for a, b in zip(jt, lt, strict=True)),
            "neither": sum(not a and not b for a, b in zip(jt, lt, strict=True))}


def judge_set(config: Mapping, generations: str, cache_dir: str, out: str, judge=None) -> None:
    """The judge's scores of one set's generations, or a recorded failure, never a stand-in."""
    from mmie.lang.judge import Judge, JudgeError, redact

    config = view(config, "judge")
    cfg = config["judge"]
    rows = io.read_jsonl(generations)
    result: dict = {"metrics": {}, "per_prompt": {"id": [r["id"] for r in rows]}, "failures": {}}
    judge = judge or Judge.from_config(cfg, config["languages"]["target"].get("name", "the target language"), cache_dir)
    calls, events = judge.calls, len(judge.events)
    try:
        scores = judge.score([r["output"] for r in rows])
    except JudgeError as err:
        result["failures"]["judge_target_rate"] = redact(str(err))
    else:
        result["per_prompt"]["judge_score"] = scores
        result["per_prompt"]["judge_target"] = [int(s >= cfg["threshold"]) for s in scores]
        result["metrics"]["judge_target_rate"] = sum(result["per_prompt"]["judge_target"]) / len(scores)
    result["calls"] = judge.calls - calls
    result["retries"] = judge.events[events:]
    result["provenance"] = provenance.build(config, rule="judge", inputs=[generations])
    io.write_json(out, result)


@job("judge", "languages.target")
def judge(config: JobConfig, generations: list[str], cache_dir: str, outs: list[str]) -> None:
    """The judge job of one (arm, seed): every set with one client and one rate limiter."""
    from mmie.lang.judge import Judge

    if len(generations) != len(outs):
        raise ValueError(f"judge: {len(generations)} generation files for {len(outs)} outputs (rules/evaluate.smk)")
    client = Judge.from_config(config["judge"], config["languages"]["target"].get("name", "the target language"),
                              cache_dir)
    for gen, out in zip(generations, outs, strict=True):
        if Path(gen).parent != Path(out).parent:
            raise ValueError(f"judge: {gen} and {out} are not the same set (rules/evaluate.smk)")
        judge_set(config, gen, cache_dir, out, client)
