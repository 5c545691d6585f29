"""One function per rule. Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these; the
functions take explicit paths so tests can call them directly."""

from __future__ import annotations

import gc
import logging
import math
import time
from pathlib import Path

from mmie import io, provenance
from mmie.config import EDIT_METHODS, eval_sets, raw_data_files, section
from mmie.errors import ModelError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data
def prepare_data(config: dict, out_dir: str, report_path: str) -> None:
    from mmie.prepare import prepare

    report = prepare(config, out_dir)
    report["provenance"] = provenance.build(config, section(config, "data", "languages", "eval", "lid"),
                                            inputs=raw_data_files(config).values(), rule="prepare_data")
    io.write_json(report_path, report)


def data_report(config: dict, prepare_report: str, data_dir: str, model_dir: str | None, out: str) -> None:
    """The final data report: the prepare report plus token lengths and truncation rate under the
    model's tokenizer (which exists only once the model is known)."""
    from mmie.data import histogram
    from mmie.models import load_tokenizer, model_source

    report = io.read_json(prepare_report)
    tok = load_tokenizer(model_source(config["model"], model_dir))
    max_len = config["data"]["max_length"]
    tokens: dict[str, dict] = {}
    warn = config["data"]["truncation_warn_share"]
    for path in sorted(Path(data_dir).rglob("*.jsonl")):
        if path.name == "lid_check.jsonl":
            continue
        rows = io.read_jsonl(path)
        texts = [r.get("text") or r.get("prompt") for r in rows]
        lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        key = str(path.relative_to(data_dir).with_suffix(""))
        share = sum(n > max_len for n in lengths) / len(lengths) if lengths else 0.0
        tokens[key] = {"histogram": histogram(lengths), "truncated_at_max_length": sum(n > max_len for n in lengths),
                       "truncation_rate": share}
        warn_truncation(key, sum(n > max_len for n in lengths), len(lengths), warn,
                        f"texts (longer than data.max_length={max_len} tokens)")
    report["tokens"] = {"max_length": max_len, "by_file": tokens}
    report["provenance_tokens"] = provenance.build(config, section(config, "data", "model"), rule="data_report")
    io.write_json(out, report)


# ----------------------------------------------------------------------------- LID
def fit_lid(config: dict, data_dir: str, detector_out: str, report_out: str) -> None:
    """The romanized detector, fitted on transliterated forget/train vs retain/train and reported on
    the dev splits (never on test: the evaluation sets stay unseen)."""
    from mmie.data import read_split
    from mmie.lid import LID, RomanizedDetector, confusion
    from mmie.translit import romanize

    data = Path(data_dir)
    scheme = config["lid"]["romanization"]
    forget_train, retain_train = read_split(data, "forget", "train"), read_split(data, "retain", "train")
    detector = RomanizedDetector.train([romanize(t, scheme) for t in forget_train], retain_train)
    detector.save(detector_out)
    lid = LID(config["lid"], config["languages"], detector)
    forget_dev, retain_dev = read_split(data, "forget", "dev"), read_split(data, "retain", "dev")
    derived = set_is_derived(data)
    natural_rom = [] if derived else read_split(data, "forget_romanized", "dev")

    def acc(texts: list[str], want_target: bool) -> float:
        return sum((detector.prob_target(t) >= 0.5) == want_target for t in texts) / len(texts)

    target_rom = f"{config['languages']['target']['code']}_rom"
    retain = config["languages"]["retain"]["code"]
    check_items = io.read_jsonl(data / "lid_check.jsonl")
    used = {"forget/train": forget_train, "retain/train": retain_train, "forget/dev": forget_dev,
            "retain/dev": retain_dev, **({} if derived else {"romanized/dev": natural_rom})}
    report = {
        "romanized_detector": {
            "train": {"romanized_target": len(forget_train), "retain": len(retain_train), "scheme": scheme},
            "dev_accuracy": {
                "transliterated_forget_dev": acc([romanize(t, scheme) for t in forget_dev], True),
                "natural_romanized_dev": None if derived else acc(natural_rom, True),
                "retain_dev": acc(retain_dev, False)},
        },
        "ensemble_on_dev": confusion(lid, [{"text": romanize(t, scheme), "label": target_rom} for t in forget_dev]
                                     + [{"text": t, "label": retain} for t in retain_dev]),
        "lid_check": confusion(lid, check_items) if check_items else None,
        "lid": lid.describe(),
        "provenance": provenance.build(config, section(config, "lid", "languages"), rule="fit_lid",
                                       inputs=[data / "forget" / "train.jsonl", data / "retain" / "train.jsonl"],
                                       texts=used),
    }
    io.write_json(report_out, report)


def set_is_derived(data_dir: Path) -> bool:
    rep = Path(data_dir) / "prepare_report.json"
    return bool(rep.is_file() and io.read_json(rep).get("romanized_derived"))


# ----------------------------------------------------------------------------- demo model
def build_demo_model(config: dict, data_dir: str, lid_detector: str, out_dir: str, report_out: str) -> None:
    from mmie import demo_model
    from mmie.data import prompt_prefix, read_split, split_dir
    from mmie.generation import Decoding, generate
    from mmie.lid import load_lid
    from mmie.metrics.text import distinct_n, is_repetitive, mean_distinct_n
    from mmie.models import load_model
    from mmie.seeding import seed_everything
    from mmie.translit import romanize

    cfg = config["demo_model"]
    data = Path(data_dir)
    # trained on train splits; early stopping, the reload check and the generation check use dev
    used = {f"{split_dir(role)}/train": read_split(data, role, "train")
            for role in ("forget", "retain", *(f"neighbour_{c}" for c in config["languages"].get("neighbours", {})))}
    train_texts = [t for texts in used.values() for t in texts]
    if cfg["include_romanized"]:
        train_texts += [romanize(t, config["lid"]["romanization"]) for t in used["forget/train"]]
    target, retain = config["languages"]["target"]["code"], config["languages"]["retain"]["code"]
    heldout = {target: read_split(data, "forget", "dev"), retain: read_split(data, "retain", "dev")}
    used.update({"forget/dev": heldout[target], "retain/dev": heldout[retain]})
    # written to a temporary folder and renamed when trained and checked (a killed or failed job
    # leaves no half-written model folder)
    with io.atomic_dir(out_dir) as tmp:
        info = demo_model.train(cfg, train_texts, heldout, tmp)

        # The sanity check loads the saved folder through the same loader every arm uses.
        seed_everything(cfg["seed"])
        lm = load_model({**config["model"], "source": "demo"}, str(tmp))
        lm.runtime["model"] = str(out_dir)   # the folder it becomes, not the temporary name
        # The reloaded folder must reproduce the training run's held-out perplexity (tokenizer and
        # weights round-trip); a drift means the saved model is not the model that was trained.
        for lang, texts in heldout.items():
            seqs = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:cfg["max_position"] - 1]
                    + [lm.tokenizer.eos_token_id] for t in texts]
            reloaded = math.exp(demo_model.heldout_loss(lm.model, seqs, lm.tokenizer.pad_token_id))
            trained = info["best_heldout"][f"heldout_ppl_{lang}"]
            if abs(reloaded - trained) > 0.01 * trained:
                raise ModelError(f"the saved demo model does not reproduce its training: held-out {lang} perplexity "
                                 f"{reloaded:.2f} after reload vs {trained:.2f} in training ({out_dir})")
        lid = load_lid(config["lid"], config["languages"], lid_detector)
        decoding = Decoding.from_config(config["generation"])
        check = {}
        for lang, role in ((target, "forget"), (retain, "retain")):
            # continuation prompts from the dev split (the evaluation sets come from test)
            items = [{"id": r["id"], "prompt": prompt_prefix(r["text"], config["eval"]["prompt_fraction"])}
                     for r in io.read_jsonl(data / role / "dev.jsonl")[:cfg["check"]["prompts"]]]
            gens = generate(lm.model, lm.tokenizer, items, decoding, desc=f"check {lang}")
            outs = [g["output"] for g in gens]
            labels = [lid.identify(o)[0] for o in outs]
            check[lang] = {"prompts": len(items), "rate": sum(lab == lang for lab in labels) / len(labels),
                           "distinct2": mean_distinct_n(outs, 2),
                           "corpus_distinct2": distinct_n(outs, 2),
                           "repetitive_share": sum(map(is_repetitive, outs)) / len(outs),
                           "examples": [{"prompt": g["prompt"], "output": g["output"]} for g in gens[:5]]}
        ck = cfg["check"]
        problems = demo_model.check_generations(check, ck["min_language_rate"], ck["min_distinct2"], ck["max_repetitive_share"])
        report = {"training": info, "check": check, "problems": problems, "runtime": lm.runtime,
                  "provenance": provenance.build(config, section(config, "demo_model", "generation"), seed=cfg["seed"],
                                                 runtime=lm.runtime, rule="build_demo_model", texts=used)}
        io.write_json(tmp / "mmie_model.json", report)
        io.write_json(report_out, report)
        if problems and cfg["check"]["enabled"]:
            raise ModelError("the demo model did not learn the languages well enough: " + "; ".join(problems)
                             + f". Details in {report_out}. Train longer (demo_model.max_steps), change demo_model.lr, "
                               "or add data.")


def warn_truncation(name: str, truncated: int, total: int, limit: float, what: str) -> None:
    """Log a warning when more than ``limit`` of a set's prompts or texts were truncated."""
    if total and truncated / total > limit:
        log.warning("%s: %.1f%% of %s were truncated (%d of %d; warning threshold data.truncation_warn_share=%s)",
                    name, 100 * truncated / total, what, truncated, total, limit)


# ----------------------------------------------------------------------------- evaluate
def evaluation_key(config: dict, arm_name: str, seed: int, model_dir: str | None, checkpoint: str | None,
                   results_root: str | None) -> str:
    """What an (arm, seed) evaluation's outputs depend on, as one hash: the config sections it reads,
    the arm (and the arm it sits on), the seed, the model, the checkpoint, the layer assets and mmie's
    own code. A finished set of an interrupted run is reused only under the same key."""
    spec = config["arms"][arm_name]
    files: list[Path] = []
    weights = {}
    if model_dir and Path(model_dir).is_dir():   # the model's configs by content, its weights by name and size
        files += sorted(p for p in Path(model_dir).iterdir() if p.suffix == ".json")
        weights = {p.name: p.stat().st_size for p in sorted(Path(model_dir).iterdir()) if p.suffix == ".safetensors"}
    if checkpoint:
        files += sorted(p for p in Path(checkpoint).iterdir() if p.is_file())
    if results_root and spec["method"] in EDIT_METHODS:
        root = Path(results_root)
        files += [root / "layers" / "selection.json", *sorted((root / "sae").rglob("*.json")),
                  *sorted((root / "sae").rglob("*.safetensors")), *sorted((root / "acts").glob("*.directions.safetensors"))]
    code = sorted(Path(__file__).resolve().parent.rglob("*.py"))
    return provenance.config_hash({
        "config": section(config, "model", "generation", "eval", "gate", "deterministic", "numerics", "data"),
        "arm": arm_name, "spec": spec, "on": config["arms"].get(spec.get("on") or "", None), "seed": seed,
        "files": provenance.data_hashes([p for p in files if p.is_file()]), "weights": weights,
        "code": provenance.data_hashes(code)})


class FinishedSets:
    """Each evaluation set's rows, kept beside the job's outputs in ``<arm>/seed<k>/.partial/`` as
    the set finishes (Snakemake removes the declared outputs of a failed job; this folder is not one).
    A rerun of the job after a kill or an error reuses the sets whose key and evaluation file are
    unchanged, and the folder is removed when the job succeeds."""

    def __init__(self, out_root: Path, key: str) -> None:
        self.dir = out_root / ".partial"
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


def evaluate(config: dict, arm_name: str, seed: int, model_dir: str | None, sets_dir: str,
             out_root: str, manifest_out: str, checkpoint: str | None = None, mia_out: str | None = None,
             results_root: str | None = None) -> None:
    """One (arm, seed) job: load the model once, then generate and score likelihoods for every set."""
    import torch

    from mmie import arms
    from mmie.generation import Decoding, encode_prompt, generate, special_prefix
    from mmie.likelihood import mia_scores, score_sequences, token_kl
    from mmie.models import load_model
    from mmie.seeding import seed_everything

    t0 = time.time()
    seed_everything(seed, config["deterministic"])
    lm = load_model(config["model"], model_dir)
    assets = None
    if results_root is not None:
        from mmie.arms.edit_arms import LayerAssets

        assets = LayerAssets.under(results_root)
    arm = arms.build(arm_name, config["arms"][arm_name], lm, checkpoint, config=config, seed=seed, assets=assets)
    model, tok = arm.model, lm.tokenizer
    decoding = Decoding.from_config(config["generation"])
    ev = config["eval"]
    oom_log: list = []
    timings = {}
    finished = FinishedSets(Path(out_root), evaluation_key(config, arm_name, seed, model_dir, checkpoint, results_root))
    reused: list[str] = []
    for info in eval_sets(config):
        t_set = time.time()
        set_file = Path(sets_dir) / f"{info.name}.jsonl"
        items = io.read_jsonl(set_file)
        if not items:
            raise ValueError(f"evaluation set {info.name} is empty ({sets_dir}); rerun prepare_data")
        rows = finished.load(info.name, set_file)
        if rows is not None:   # finished by an earlier, interrupted run of this job with the same inputs
            io.write_jsonl(Path(out_root) / info.name / "generations.jsonl", rows)
            reused.append(info.name)
            continue
        with arm.active():
            gens = generate(model, tok, items, decoding, system=arm.system, seed=seed,
                            desc=f"{arm_name}/seed{seed}/{info.name}", oom_log=oom_log)
            refs = [it for it in items if it.get("text")]
            if refs:
                prefix = special_prefix(tok)
                ctx = prefix + (tok(arm.system + "\n", add_special_tokens=False)["input_ids"] if arm.system else [])
                ref_scores = score_sequences(
                    model, tok.pad_token_id, [ctx] * len(refs),
                    [tok(it["text"], add_special_tokens=False)["input_ids"] for it in refs],
                    batch_size=ev["score_batch_size"], max_length=ev["max_length"], desc=f"ppl {info.name}",
                    oom_log=oom_log)
                by_id = {it["id"]: s for it, s in zip(refs, ref_scores, strict=True)}
        if refs and info.kind == "retain":
            # token KL(base ‖ arm) on retain texts, outside active(): the base pass runs on the base model
            kls = token_kl(arm, tok, [it["text"] for it in refs], batch_size=ev["score_batch_size"],
                           max_length=ev["max_length"], desc=f"token KL {info.name}", oom_log=oom_log)
            for it, k in zip(refs, kls, strict=True):
                by_id[it["id"]] = {**by_id[it["id"]], "kl": k["kl"], "kl_tokens": k["tokens"]}
        with arm.reference():
            # fluency of the outputs under the base model, conditioned on the raw prompt (no instruction)
            contexts = [encode_prompt(tok, it["prompt"], None, decoding)[0] for it in items]
            base_scores = score_sequences(model, tok.pad_token_id, contexts, [g["output_ids"] for g in gens],
                                          batch_size=ev["score_batch_size"], max_length=ev["max_length"],
                                          desc=f"gen_ppl_base {info.name}", oom_log=oom_log)
        rows = []
        for it, g, b in zip(items, gens, base_scores, strict=True):
            row = {k: v for k, v in g.items() if k != "output_ids"}
            if "answer" in it:
                row["answer"] = it["answer"]
            row.update(gen_nll_base=b["nll"], gen_tokens_base=b["tokens"])
            if it.get("text"):
                s = by_id[it["id"]]
                row.update(reference=it["text"], ref_nll=s["nll"], ref_tokens=s["tokens"], ref_truncated=s["truncated"])
                if "kl" in s:
                    row.update(kl=s["kl"], kl_tokens=s["kl_tokens"])
            rows.append(row)
        limit = config["data"]["truncation_warn_share"]
        warn_truncation(info.name, sum(r["prompt_truncated"] for r in rows), len(rows), limit, "prompts")
        warn_truncation(info.name, sum(bool(r.get("ref_truncated")) for r in rows), len(rows), limit,
                        "reference texts")
        io.write_jsonl(Path(out_root) / info.name / "generations.jsonl", rows)
        finished.save(info.name, set_file, rows)
        timings[info.name] = round(time.time() - t_set, 2)
        del gens, rows
        if torch.cuda.is_available():
            # hand the set's cached blocks back to the GPU; on a CPU a full collection is all cost
            # (0.1-0.6 s per set with torch and transformers loaded: a fifth of a demo evaluate job)
            gc.collect()
            torch.cuda.empty_cache()
    if mia_out:
        # membership inference: forget/train (members, seen by the base model's training when it is
        # the demo model) vs forget/holdout (never seen) — same language, so it measures memorisation
        data_root = Path(sets_dir).parent
        n = ev["mia_max_items"]
        rows = [(r, 1) for r in io.read_jsonl(data_root / "forget" / "train.jsonl")[:n]] + \
               [(r, 0) for r in io.read_jsonl(data_root / "forget" / "holdout.jsonl")[:n]]
        seqs = [(special_prefix(tok) + tok(r["text"], add_special_tokens=False)["input_ids"])[:ev["max_length"]]
                for r, _ in rows]
        with arm.active():
            scores = mia_scores(model, tok.pad_token_id, seqs, k=ev["mia_k"], batch_size=ev["score_batch_size"],
                                oom_log=oom_log)
        io.write_jsonl(mia_out, ({"id": r["id"], "member": m, **s} for (r, m), s in zip(rows, scores, strict=True)))
    manifest = {
        "arm": arm_name, "seed": seed, "arm_details": {"method": arm.method, **arm.details},
        "decoding": decoding.__dict__, "sets": [s.name for s in eval_sets(config)], "seconds_per_set": timings,
        "reused_sets": reused,
        "oom_retries": oom_log, "seconds": round(time.time() - t0, 1),
        "provenance": provenance.build(config, section(config, "model", "generation", "eval", "arms"), seed=seed,
                                       runtime=lm.runtime, rule="evaluate",
                                       inputs=[Path(sets_dir) / f"{s.name}.jsonl" for s in eval_sets(config)]),
    }
    if checkpoint:
        manifest["checkpoint"] = io.read_json(Path(checkpoint) / "manifest.json")["summary"]
    io.write_json(manifest_out, manifest)
    finished.clear()


# ----------------------------------------------------------------------------- score
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


def score(config: dict, arm_name: str, seed: int, generations, manifest: str, lid_detector: str, outputs,
          mia: str | None = None, judges=None) -> None:
    """Metrics of every set of one (arm, seed) from stored generations, one ``metrics.json`` per set:
    one job, one LID load, no model and no torch. ``generations``, ``outputs`` and ``judges`` are
    ``<run>/<set>/{generations.jsonl,metrics.json,judge.json}`` paths (``judges`` only when the judge
    is enabled); the membership-inference scores ``mia`` feed the forget set's metrics."""
    from mmie.lid import load_lid

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


def score_set(config: dict, arm_name: str, seed: int, info, generations: str, man: dict, lid, lid_detector: str,
              mia: str | None = None, judge: str | None = None) -> dict:
    """The metrics.json content of one set (see ``score``)."""
    from mmie.metrics.sets import compute_set_metrics

    records = io.read_jsonl(generations)
    result = compute_set_metrics(records, info, lid, target_script=config["languages"]["target"]["script"],
                                 romanization_scheme=config["lid"]["romanization"],
                                 yes_words=config["eval"]["yes_words"], no_words=config["eval"]["no_words"])
    if mia:
        from mmie.metrics.text import auc

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
            "provenance": {**provenance.build(config, section(config, "lid", "languages"), seed=seed,
                                              runtime=evaluated["runtime"], rule="score",
                                              inputs=[generations, lid_detector]),
                           "evaluate": {"git": evaluated["git"], "device": evaluated["device"],
                                        "config_hash": evaluated["config_hash"],
                                        "oom_retries": man["oom_retries"]}}}


# ----------------------------------------------------------------------------- train
def train_adapter(config: dict, arm_name: str, seed: int, model_dir: str | None, data_dir: str, out_dir: str,
                  selection: str | None = None) -> None:
    """One (arm, seed) unlearning run; writes the checkpoint directory atomically (temp dir + rename):
    adapter weights, manifest.json, train_log.csv. The resumable state lives in the sibling folder
    ``<out_dir>.resume/`` while training runs (a rerun after a kill continues from it) and is removed
    once the checkpoint is in place."""

    import pandas as pd

    from mmie import arms, unlearn
    from mmie.activations import model_fingerprint
    from mmie.generation import special_prefix
    from mmie.models import load_model
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
    data = Path(data_dir)

    def enc(path: Path, limit: int | None = None) -> list[list[int]]:
        rows = io.read_jsonl(path)[:limit]
        seqs = [(special_prefix(tok) + tok(r["text"], add_special_tokens=False)["input_ids"])[:tcfg["max_length"]]
                for r in rows]
        return [s for s in seqs if len(s) >= 2]

    forget, retain = enc(data / "forget" / "train.jsonl"), enc(data / "retain" / "train.jsonl")
    h_forget = enc(data / "forget" / "dev.jsonl", tcfg["heldout_items"])   # early stopping on dev, never test
    h_retain = enc(data / "retain" / "dev.jsonl", tcfg["heldout_items"])
    seed_everything(seed, config["deterministic"])  # adapter initialisation depends only on the seed
    selected = io.read_json(selection)["layers"] if selection else None
    adapter = arms.create_adapter(config, spec, lm.model, selected)
    n_trainable = sum(p.numel() for p in adapter.parameters())
    key = provenance.config_hash({
        "arm": arm_name, "seed": seed, "spec": spec, "layers": getattr(adapter, "layers", None),
        "deterministic": config["deterministic"], "model": model_fingerprint(lm.model),
        "data": [forget, retain, h_forget, h_retain]})
    resume = unlearn.ResumeStore(resume_dir(out), key)
    result = unlearn.train(adapter.model, adapter, tok.pad_token_id, forget, retain, h_forget, h_retain, tcfg,
                           seed, desc=f"train {arm_name}/seed{seed}", resume=resume)
    with io.atomic_dir(out) as tmp:
        adapter.save(tmp)
        io.write_csv(tmp / "train_log.csv", pd.DataFrame(result.log_rows))
        io.write_json(tmp / "manifest.json", {
            "arm": arm_name, "seed": seed, "method": spec["method"], "spec": spec,
            "layers": getattr(adapter, "layers", None), "trainable_parameters": n_trainable,
            "train_texts": {"forget": len(forget), "retain": len(retain)}, "summary": result.summary,
            "provenance": provenance.build(config, {"arm": spec, "layers": config["layers"]}, seed=seed,
                                           runtime=lm.runtime, rule=f"train_{spec['method']}",
                                           inputs=[data / "forget" / "train.jsonl", data / "retain" / "train.jsonl"],
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
    from mmie.unlearn import sweep_unfinished_writes

    for stale in io.sweep_stale(out_dir):
        log.warning("removed %s, the unfinished checkpoint folder of a killed run", stale)
    sweep_unfinished_writes(resume_dir(out_dir))


def adapter_texts(data: Path, heldout_items: int) -> dict[str, list[str]]:
    """The texts an unlearning run used: forget/retain train (fitted) and the first ``heldout_items``
    of forget/retain dev (early stopping)."""
    return {f"{role}/{part}": [r["text"] for r in io.read_jsonl(data / role / f"{part}.jsonl")[:limit]]
            for role in ("forget", "retain") for part, limit in (("train", None), ("dev", heldout_items))}


def merge_judge(result: dict, judged: dict) -> None:
    """Judge scores become metrics like any other (or a recorded failure), plus the agreement of the
    judge with the LID: where they disagree is where romanized or obfuscated Hindi hides."""
    from mmie.judge import cohen_kappa

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


# ----------------------------------------------------------------------------- statistics
def stats(config: dict, metric_paths: list[str], intervals_out: str, headline_out: str, gates_out: str,
          decisions_out: str, results_out: str, headline_tex_out: str, selection: str | None = None) -> None:
    """Intervals, gates, decisions and the results page; ``selection``: the layer-selection artifact,
    whose choice and stability the page reports (an unstable choice is flagged there and in
    decisions.json's ``_choices``)."""
    import pandas as pd

    from mmie import gates as G
    from mmie import results_page
    from mmie.config import arm_seeds, is_seeded, set_names, unevaluated_reason

    t0 = time.time()
    res = G.Results(list(metric_paths))
    arms, sets = list(config["arms"]), set_names(config)
    grid = {a: arm_seeds(config, a) for a in arms}
    seeded = {a: is_seeded(config, a) for a in arms}
    cfg = config["stats"]
    iv = pd.DataFrame(G.intervals(res, arms, sets, grid, cfg, seeded=seeded),
                      columns=["arm", "set", "metric", *G.INTERVAL_COLUMNS, "n_seeds", "seeded", "n_prompts"])
    # every configured gate gets a row: one on a set this run does not evaluate fails as "not evaluated"
    gate_specs = G.expand_gates(config["gates"], list(config["languages"]["neighbours"]))
    reasons = {g["set"]: unevaluated_reason(config, g["set"]) for g in gate_specs if g["set"] not in sets}
    rows, decisions = G.decide(res, arms, gate_specs, grid, cfg, sets=sets, set_reasons=reasons, seeded=seeded)
    columns = ["arm", "gate", "metric", "set", "value", "threshold", "ci_low", "ci_high", "p_adjusted", "passed",
               "reason", "direction", "relative", "factor", "base", "margin", "ci_level", "gate_alpha", "p_value",
               "correction", "n_seeds", "seeded", "base_n_seeds", "n_prompts"]
    gates = pd.DataFrame(rows, columns=columns)
    io.write_csv(intervals_out, iv)
    table = results_page.headline(iv, arms, sets)
    io.write_csv(headline_out, table)
    io.write_text(headline_tex_out, results_page.latex(
        table, f"{config['experiment']}: estimate [{cfg['level']:.0%} interval] per arm "
               f"(seeds {config['seeds']}; seed-independent arms ran once)."))
    io.write_csv(gates_out, gates)
    chosen = io.read_json(selection) if selection else None
    choices = {"layers": {k: chosen.get(k) for k in ("layers", "forced", "frequency", "margin", "tie", "stable",
                                                      "stability_floor")}} if chosen else {}
    io.write_json(decisions_out, {**decisions, "_choices": choices, "_provenance": provenance.build(
        config, section(config, "stats", "gates"), rule="stats", inputs=list(metric_paths) + ([selection] if selection else []))})
    io.write_text(results_out, results_page.page(iv, gates, decisions, arms, sets, config, chosen))
    log.info("statistics for %d arms in %.1f s", len(arms), time.time() - t0)


def samples(config: dict, generations: list[str], out: str, n: int) -> None:
    """The report's side-by-side sample generations (``results_page.samples_html``)."""
    from mmie import results_page

    by = {}
    for path in generations:
        p = Path(path)
        by[(p.parents[2].name, p.parent.name)] = io.read_jsonl(p)   # <arm>/seed<k>/<set>/generations.jsonl
    io.write_text(out, results_page.samples_html(config, by, n))


def convert_gemma(config: dict, out_dir: str, report_out: str) -> None:
    """Gemma-3-270M from its PyPI package to an HF folder, once per experiment (optional extra)."""
    from mmie.gemma import convert

    with io.atomic_dir(out_dir) as tmp:
        info = convert(tmp)
    io.write_json(report_out, {"conversion": info, "provenance": provenance.build(
        config, section(config, "model"), rule="convert_gemma")})


# ----------------------------------------------------------------------------- layers and activations
def select_layers(config: dict, model_dir: str | None, data_dir: str, out: str,
                  judge_cache_dir: str | None = None) -> None:
    """The layer-selection checkpoint: one artifact with every score, each candidate's selection
    frequency, the margin, ties, ``stable`` and the chosen layers, from dev texts only. With
    ``layers.force_layers`` set it records the forced layers and loads no model."""
    from mmie import layers

    if config["layers"]["force_layers"]:
        result = layers.forced(config)
        runtime, used = {}, None
    else:

        from mmie.data import read_split, split_dir
        from mmie.models import load_model
        from mmie.seeding import seed_everything

        seed_everything(config["data"]["seed"], config["deterministic"])
        sel = config["layers"]["selection"]
        lm = load_model(config["model"], model_dir)
        neighbours = [f"neighbour_{c}" for c in config["languages"].get("neighbours", {})]
        dev = {role: read_split(data_dir, role, "dev")[:sel["max_texts"]] for role in ("forget", "retain", *neighbours)}
        texts = {"target": dev["forget"], "retain": dev["retain"], "neighbours": [t for r in neighbours for t in dev[r]]}
        used = {f"{split_dir(role)}/dev": t for role, t in dev.items()}
        judge = None
        if sel["judge_weight"] > 0:
            from mmie.judge import Judge

            if not config["judge"]["enabled"]:
                raise ModelError("layers.selection.judge_weight > 0 needs judge.enabled: true")
            judge = Judge.from_config(config["judge"], config["languages"]["target"].get("name", "the target language"),
                                      judge_cache_dir or config["judge"]["cache_dir"])
        result = layers.select(config, lm, texts, judge)
        if judge is not None:
            result["judge_calls"] = judge.calls
        runtime = lm.runtime
        log.info("chosen layers %s (frequency %s, stable %s)", result["layers"], result["frequency"], result["stable"])
    result["provenance"] = provenance.build(config, section(config, "layers", "model"), runtime=runtime,
                                            rule="select_layers", seed=config["data"]["seed"], texts=used)
    io.write_json(out, result)


def cache_activations(config: dict, layer: int, model_dir: str | None, data_dir: str, out: str,
                      directions_out: str, meta_out: str) -> None:
    """Token-level activations of one layer for every cached role (written once), and the
    directions fitted on them (difference in means, script eraser)."""

    from mmie.activations import cache_roles, collect, model_fingerprint, write_cache
    from mmie.directions import fit_layer_directions, save_directions
    from mmie.hooks import check_layers
    from mmie.models import load_model

    t0 = time.time()
    act = config["layers"]["activations"]
    lm = load_model(config["model"], model_dir)
    check_layers(lm.model, [layer])
    fp = model_fingerprint(lm.model)
    roles = cache_roles(config, data_dir, act["max_texts"])
    oom_log: list = []
    acts = {role: collect(lm.model, lm.tokenizer, texts, [layer], max_length=act["max_length"],
                          batch_size=act["batch_size"], desc=f"layer {layer} {role}", oom_log=oom_log)[layer]
            for role, texts in roles.items()}
    seconds = time.time() - t0
    tokens = sum(int(a.shape[0]) for a, _ in acts.values())
    write_cache(out, layer, acts, fp, dtype=act["dtype"])
    directions = fit_layer_directions({role: a for role, (a, _) in acts.items()})
    save_directions(directions_out, directions, {"layer": str(layer), "model_fingerprint": fp})
    io.write_json(meta_out, {
        "layer": layer, "model_fingerprint": fp, "d_in": int(next(iter(acts.values()))[0].shape[1]),
        "texts": {role: len(t) for role, t in roles.items()},
        "tokens": {role: int(a.shape[0]) for role, (a, _) in acts.items()},
        "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 1),
        "dim_norm": float(directions["dim"].norm()), "oom_retries": oom_log,
        "provenance": provenance.build(config, section(config, "layers", "model", "data"), runtime=lm.runtime,
                                       rule="cache_activations",
                                       inputs=[Path(data_dir) / r / "train.jsonl" for r in ("forget", "retain")],
                                       texts=roles),
    })


def sweep_gate(config: dict, arm_name: str, seed: int, model_dir: str | None, data_dir: str, lid_detector: str,
               results_root: str, out: str) -> None:
    """Dose-response of an SAE gate arm: target rate on forget/dev prompts and retain/dev perplexity for
    each alpha in gate.sweep_alphas, for the arm's features and for as many random features (the
    control). It informs the choice of gate.alpha, so it reads dev, never the evaluation sets."""

    from mmie.activations import model_fingerprint
    from mmie.arms.edit_arms import LayerAssets, layer_edits
    from mmie.data import prompt_prefix
    from mmie.generation import Decoding, generate, special_prefix
    from mmie.hooks import edit_layer_outputs
    from mmie.lid import load_lid
    from mmie.likelihood import perplexity, score_sequences
    from mmie.models import load_model
    from mmie.seeding import seed_everything

    t0 = time.time()
    seed_everything(seed, config["deterministic"])
    spec = config["arms"][arm_name]
    g = config["gate"]
    lm = load_model(config["model"], model_dir)
    model, tok = lm.model, lm.tokenizer
    lid = load_lid(config["lid"], config["languages"], lid_detector)
    assets = LayerAssets.under(results_root)   # loads each layer's SAE once for every sweep point
    fingerprint = model_fingerprint(model)
    n = g["sweep_prompts"]
    data = Path(data_dir)
    forget = io.read_jsonl(data / "forget" / "dev.jsonl")[:n]
    prompts = [{"id": r["id"], "prompt": prompt_prefix(r["text"], config["eval"]["prompt_fraction"])} for r in forget]
    retain = io.read_jsonl(data / "retain" / "dev.jsonl")[:n]
    prefix = special_prefix(tok)
    retain_ids = [tok(r["text"], add_special_tokens=False)["input_ids"] for r in retain]
    decoding = Decoding.from_config(config["generation"])
    ev = config["eval"]
    rows = []
    for method in ("sae_gate", "random_gate"):
        for alpha in g["sweep_alphas"]:
            fns, used = layer_edits(config, spec, model, assets, seed, alpha=alpha, method=method,
                                    fingerprint=fingerprint)
            with edit_layer_outputs(model, fns, skip_prefix=prefix):   # where the gate arm edits
                outs = [x["output"] for x in generate(model, tok, prompts, decoding, seed=seed,
                                                      desc=f"sweep {method} alpha={alpha}")]
                scores = score_sequences(model, tok.pad_token_id, [prefix] * len(retain_ids), retain_ids,
                                         batch_size=ev["score_batch_size"], max_length=ev["max_length"],
                                         desc=f"sweep ppl {method} alpha={alpha}")
            target = [int(lid.is_target(lid.identify(o)[0])) for o in outs]
            ppl = perplexity(sum(s["nll"] for s in scores), sum(s["tokens"] for s in scores))
            rows.append({"method": method, "alpha": alpha, "target_rate": sum(target) / len(target),
                         "retain_ppl": ppl, "prompts": len(outs), "retain_texts": len(scores),
                         "features": {k: v["features"] for k, v in used.items() if k[len("layer"):].isdigit()}})
            log.info("sweep %s alpha=%s: target_rate %.3f retain ppl %.2f", method, alpha, rows[-1]["target_rate"], ppl)
    io.write_json(out, {"arm": arm_name, "seed": seed, "rows": rows, "seconds": round(time.time() - t0, 1),
                        "provenance": provenance.build(config, section(config, "gate", "arms"), seed=seed,
                                                       runtime=lm.runtime, rule="sweep_gate",
                                                       inputs=[data / "forget" / "dev.jsonl",
                                                               data / "retain" / "dev.jsonl"],
                                                       texts={"forget/dev": [r["text"] for r in forget],
                                                              "retain/dev": [r["text"] for r in retain]})})
