"""One function per rule. Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these; the
functions take explicit paths so tests can call them directly."""

from __future__ import annotations

import gc
import logging
import math
import time
from pathlib import Path

from mmie import io, provenance
from mmie.config import eval_sets, raw_data_files, section, set_info
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
    from mmie.lid import LID, RomanizedDetector, confusion
    from mmie.translit import romanize

    data = Path(data_dir)
    scheme = config["lid"]["romanization"]
    forget_train = [r["text"] for r in io.read_jsonl(data / "forget" / "train.jsonl")]
    retain_train = [r["text"] for r in io.read_jsonl(data / "retain" / "train.jsonl")]
    detector = RomanizedDetector.train([romanize(t, scheme) for t in forget_train], retain_train)
    detector.save(detector_out)
    lid = LID(config["lid"], config["languages"], detector)
    forget_eval = [r["text"] for r in io.read_jsonl(data / "forget" / "eval.jsonl")]
    retain_eval = [r["text"] for r in io.read_jsonl(data / "retain" / "eval.jsonl")]
    natural_rom = [r["text"] for r in io.read_jsonl(data / "eval_sets" / "romanized.jsonl")]

    def acc(texts: list[str], want_target: bool) -> float:
        return sum((detector.prob_target(t) >= 0.5) == want_target for t in texts) / len(texts)

    target_rom = f"{config['languages']['target']['code']}_rom"
    retain = config["languages"]["retain"]["code"]
    check_items = io.read_jsonl(data / "lid_check.jsonl")
    report = {
        "romanized_detector": {
            "train": {"romanized_target": len(forget_train), "retain": len(retain_train), "scheme": scheme},
            "heldout_accuracy": {
                "transliterated_forget_eval": acc([romanize(t, scheme) for t in forget_eval], True),
                "natural_romanized_set": acc(natural_rom, True) if not set_is_derived(data) else None,
                "retain_eval": acc(retain_eval, False)},
        },
        "ensemble_on_heldout": confusion(lid, [{"text": romanize(t, scheme), "label": target_rom} for t in forget_eval]
                                         + [{"text": t, "label": retain} for t in retain_eval]),
        "lid_check": confusion(lid, check_items) if check_items else None,
        "lid": lid.describe(),
        "provenance": provenance.build(config, section(config, "lid", "languages"), rule="fit_lid",
                                       inputs=[data / "forget" / "train.jsonl", data / "retain" / "train.jsonl"]),
    }
    io.write_json(report_out, report)


def set_is_derived(data_dir: Path) -> bool:
    rep = Path(data_dir) / "prepare_report.json"
    return bool(rep.is_file() and io.read_json(rep).get("romanized_derived"))


# ----------------------------------------------------------------------------- demo model
def build_demo_model(config: dict, data_dir: str, lid_detector: str, out_dir: str, report_out: str) -> None:
    from mmie import demo_model
    from mmie.data import prompt_prefix
    from mmie.generation import Decoding, generate
    from mmie.lid import load_lid
    from mmie.metrics.text import distinct_n, is_repetitive, mean_distinct_n
    from mmie.models import load_model
    from mmie.seeding import seed_everything
    from mmie.translit import romanize

    cfg = config["demo_model"]
    data = Path(data_dir)
    rows = lambda p: [r["text"] for r in io.read_jsonl(p)]  # noqa: E731
    train_texts = rows(data / "forget" / "train.jsonl") + rows(data / "retain" / "train.jsonl")
    for path in sorted((data / "neighbours").glob("*.jsonl")):
        train_texts += rows(path)
    if cfg["include_romanized"]:
        train_texts += [romanize(t, config["lid"]["romanization"]) for t in rows(data / "forget" / "train.jsonl")]
    target, retain = config["languages"]["target"]["code"], config["languages"]["retain"]["code"]
    heldout = {target: rows(data / "forget" / "eval.jsonl"), retain: rows(data / "retain" / "eval.jsonl")}
    info = demo_model.train(cfg, train_texts, heldout, out_dir)

    # The sanity check loads the saved folder through the same loader every arm uses.
    seed_everything(cfg["seed"])
    lm = load_model({**config["model"], "source": "demo"}, out_dir)
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
        # continuation prompts from the held-out split (not the capped evaluation sets)
        items = [{"id": r["id"], "prompt": prompt_prefix(r["text"], config["eval"]["prompt_fraction"])}
                 for r in io.read_jsonl(data / role / "eval.jsonl")[:cfg["check"]["prompts"]]]
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
                                             runtime=lm.runtime, rule="build_demo_model")}
    io.write_json(Path(out_dir) / "mmie_model.json", report)
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
def evaluate(config: dict, arm_name: str, seed: int, model_dir: str | None, sets_dir: str,
             out_root: str, manifest_out: str, checkpoint: str | None = None, mia_out: str | None = None,
             results_root: str | None = None) -> None:
    """One (arm, seed) job: load the model once, then generate and score likelihoods for every set."""
    import torch

    from mmie import arms
    from mmie.generation import Decoding, encode_prompt, generate, special_prefix
    from mmie.likelihood import kl_items, mia_scores, score_sequences
    from mmie.models import load_model
    from mmie.seeding import seed_everything

    t0 = time.time()
    torch.set_num_threads(config["resources"]["torch_threads"])
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
    for info in eval_sets(config):
        t_set = time.time()
        items = io.read_jsonl(Path(sets_dir) / f"{info.name}.jsonl")
        if not items:
            raise ValueError(f"evaluation set {info.name} is empty ({sets_dir}); rerun prepare_data")
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
                    batch_size=ev["score_batch_size"], max_length=ev["max_length"], desc=f"ppl {info.name}")
                by_id = {it["id"]: s for it, s in zip(refs, ref_scores, strict=True)}
                if info.kind == "retain":
                    # token KL to base on retain texts (reference and arm passes in one place)
                    kls = kl_items(model, arm, tok.pad_token_id, ctx,
                                   [tok(it["text"], add_special_tokens=False)["input_ids"] for it in refs],
                                   batch_size=ev["score_batch_size"], max_length=ev["max_length"], base_context=prefix)
                    for it, k in zip(refs, kls, strict=True):
                        by_id[it["id"]] = {**by_id[it["id"]], "kl": k["kl"], "kl_tokens": k["tokens"]}
        with arm.reference():
            # fluency of the outputs under the base model, conditioned on the raw prompt (no instruction)
            contexts = [encode_prompt(tok, it["prompt"], None, decoding)[0] for it in items]
            base_scores = score_sequences(model, tok.pad_token_id, contexts, [g["output_ids"] for g in gens],
                                          batch_size=ev["score_batch_size"], max_length=ev["max_length"],
                                          desc=f"gen_ppl_base {info.name}")
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
        timings[info.name] = round(time.time() - t_set, 2)
        del gens, rows
        gc.collect()
        if torch.cuda.is_available():
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
            scores = mia_scores(model, tok.pad_token_id, seqs, k=ev["mia_k"], batch_size=ev["score_batch_size"])
        io.write_jsonl(mia_out, ({"id": r["id"], "member": m, **s} for (r, m), s in zip(rows, scores, strict=True)))
    manifest = {
        "arm": arm_name, "seed": seed, "arm_details": {"method": arm.method, **arm.details},
        "decoding": decoding.__dict__, "sets": [s.name for s in eval_sets(config)], "seconds_per_set": timings,
        "oom_retries": oom_log, "seconds": round(time.time() - t0, 1),
        "provenance": provenance.build(config, section(config, "model", "generation", "eval", "arms"), seed=seed,
                                       runtime=lm.runtime, rule="evaluate",
                                       inputs=[Path(sets_dir) / f"{s.name}.jsonl" for s in eval_sets(config)]),
    }
    if checkpoint:
        manifest["checkpoint"] = io.read_json(Path(checkpoint) / "manifest.json")["summary"]
    io.write_json(manifest_out, manifest)


# ----------------------------------------------------------------------------- score
def score(config: dict, arm_name: str, seed: int, set_name: str, generations: str, manifest: str,
          lid_detector: str, out: str, mia: str | None = None, judge: str | None = None) -> None:
    """Metrics of one (arm, seed, set) from stored generations: no model, no torch."""
    from mmie.lid import load_lid
    from mmie.metrics.sets import compute_set_metrics

    info = set_info(config, set_name)
    records = io.read_jsonl(generations)
    lid = load_lid(config["lid"], config["languages"], lid_detector)
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
    man = io.read_json(manifest)
    evaluated = man["provenance"]
    result = {"arm": arm_name, "seed": seed, "set": set_name, **result, "lid": lid.describe(),
              "provenance": {**provenance.build(config, section(config, "lid", "languages"), seed=seed,
                                                runtime=evaluated["runtime"], rule="score",
                                                inputs=[generations, lid_detector]),
                             "evaluate": {"git": evaluated["git"], "device": evaluated["device"],
                                          "config_hash": evaluated["config_hash"],
                                          "oom_retries": man["oom_retries"]}}}
    io.write_json(out, result)


# ----------------------------------------------------------------------------- train
def train_adapter(config: dict, arm_name: str, seed: int, model_dir: str | None, data_dir: str, out_dir: str,
                  selection: str | None = None) -> None:
    """One (arm, seed) unlearning run; writes the checkpoint directory atomically (temp dir + rename):
    adapter weights, manifest.json, train_log.csv. The resumable state lives in the sibling folder
    ``<out_dir>.resume/`` while training runs (a rerun after a kill continues from it) and is removed
    once the checkpoint is in place."""
    import shutil
    import tempfile

    import pandas as pd
    import torch

    from mmie import arms, unlearn
    from mmie.activations import model_fingerprint
    from mmie.generation import special_prefix
    from mmie.models import load_model
    from mmie.seeding import seed_everything

    spec = arms.resolve_spec(config["arms"][arm_name])
    tcfg = spec["train"]
    out = Path(out_dir)
    sweep_killed_run(out)
    torch.set_num_threads(config["resources"]["torch_threads"])
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
    h_forget = enc(data / "forget" / "eval.jsonl", tcfg["heldout_items"])
    h_retain = enc(data / "retain" / "eval.jsonl", tcfg["heldout_items"])
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        adapter.save(tmp)
        io.write_csv(tmp / "train_log.csv", pd.DataFrame(result.log_rows))
        io.write_json(tmp / "manifest.json", {
            "arm": arm_name, "seed": seed, "method": spec["method"], "spec": spec,
            "layers": getattr(adapter, "layers", None), "trainable_parameters": n_trainable,
            "train_texts": {"forget": len(forget), "retain": len(retain)}, "summary": result.summary,
            "provenance": provenance.build(config, {"arm": spec, "layers": config["layers"]}, seed=seed,
                                           runtime=lm.runtime, rule=f"train_{spec['method']}",
                                           inputs=[data / "forget" / "train.jsonl", data / "retain" / "train.jsonl"]),
        })
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    resume.clear()


def resume_dir(out_dir: Path) -> Path:
    """Where a training job keeps its resumable state: a sibling of its checkpoint folder."""
    return out_dir.with_name(out_dir.name + ".resume")


def sweep_killed_run(out_dir: Path) -> None:
    """Remove what a killed training job of this checkpoint left half-written: its temporary
    checkpoint folders (``.<name>.*`` beside it) and unfinished resume-state files. The resume
    state itself stays: it is what the rerun continues from."""
    import glob
    import shutil

    from mmie.unlearn import sweep_unfinished_writes

    for stale in sorted(out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*")):
        if stale.is_dir():
            shutil.rmtree(stale)
            log.warning("removed %s, the unfinished checkpoint folder of a killed run", stale)
    sweep_unfinished_writes(resume_dir(out_dir))


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
          decisions_out: str, results_out: str) -> None:
    import pandas as pd

    from mmie import gates as G
    from mmie import results_page
    from mmie.config import set_names

    t0 = time.time()
    res = G.Results(list(metric_paths))
    arms, sets, seeds = list(config["arms"]), set_names(config), [int(s) for s in config["seeds"]]
    cfg = config["stats"]
    iv = pd.DataFrame(G.intervals(res, arms, sets, seeds, cfg))
    gate_specs = G.expand_gates(config["gates"], list(config["languages"]["neighbours"]))
    gate_specs = [g for g in gate_specs if g["set"] in sets]
    rows, decisions = G.decide(res, arms, gate_specs, seeds, cfg)
    columns = ["arm", "gate", "metric", "set", "value", "threshold", "ci_low", "ci_high", "p_adjusted", "passed",
               "reason", "direction", "relative", "factor", "p_value"]
    gates = pd.DataFrame(rows, columns=columns)
    io.write_csv(intervals_out, iv)
    io.write_csv(headline_out, results_page.headline(iv, arms, sets))
    io.write_csv(gates_out, gates)
    io.write_json(decisions_out, {**decisions, "_provenance": provenance.build(
        config, section(config, "stats", "gates"), rule="stats", inputs=list(metric_paths))})
    io.write_text(results_out, results_page.page(iv, gates, decisions, arms, sets, config))
    log.info("statistics for %d arms in %.1f s", len(arms), time.time() - t0)


def convert_gemma(config: dict, out_dir: str, report_out: str) -> None:
    """Gemma-3-270M from its PyPI package to an HF folder, once per experiment (optional extra)."""
    from mmie.gemma import convert

    info = convert(out_dir)
    io.write_json(report_out, {"conversion": info, "provenance": provenance.build(
        config, section(config, "model"), rule="convert_gemma")})


# ----------------------------------------------------------------------------- layers and activations
def select_layers(config: dict, model_dir: str | None, data_dir: str, sets_dir: str, lid_detector: str,
                  out: str, judge_cache_dir: str | None = None) -> None:
    """The layer-selection checkpoint: one artifact with every score, vote and the chosen layers.
    With ``layers.force_layers`` set it records the forced layers and loads no model."""
    from mmie import layers

    if config["layers"]["force_layers"]:
        result = layers.forced(config)
        runtime = {}
    else:
        import torch

        from mmie.lid import load_lid
        from mmie.models import load_model
        from mmie.seeding import seed_everything

        torch.set_num_threads(config["resources"]["torch_threads"])
        seed_everything(config["data"]["seed"], config["deterministic"])
        sel = config["layers"]["selection"]
        lm = load_model(config["model"], model_dir)
        data_dir = Path(data_dir)
        texts = {
            "target": [r["text"] for r in io.read_jsonl(data_dir / "forget" / "train.jsonl")][:sel["max_texts"]],
            "retain": [r["text"] for r in io.read_jsonl(data_dir / "retain" / "train.jsonl")][:sel["max_texts"]],
            "neighbours": [r["text"] for code in config["languages"].get("neighbours", {})
                           for r in io.read_jsonl(data_dir / "neighbours" / f"{code}.jsonl")[:sel["max_texts"]]],
        }
        prompts = io.read_jsonl(Path(sets_dir) / "forget.jsonl")[:sel["causal_prompts"]]
        lid = load_lid(config["lid"], config["languages"], lid_detector)
        judge = None
        if sel["judge_weight"] > 0:
            from mmie.judge import Judge

            if not config["judge"]["enabled"]:
                raise ModelError("layers.selection.judge_weight > 0 needs judge.enabled: true")
            judge = Judge.from_config(config["judge"], config["languages"]["target"].get("name", "the target language"),
                                      judge_cache_dir or config["judge"]["cache_dir"])
        result = layers.select(config, lm, texts, prompts, lid, judge)
        if judge is not None:
            result["judge_calls"] = judge.calls
        runtime = lm.runtime
        log.info("chosen layers %s (votes %s)", result["layers"], result["votes"])
    result["provenance"] = provenance.build(config, section(config, "layers", "model"), runtime=runtime,
                                            rule="select_layers", seed=config["data"]["seed"])
    io.write_json(out, result)


def cache_activations(config: dict, layer: int, model_dir: str | None, data_dir: str, out: str,
                      directions_out: str, meta_out: str) -> None:
    """Token-level activations of one layer for every cached role (written once), and the
    directions fitted on them (difference in means, script eraser)."""
    import torch

    from mmie.activations import cache_roles, collect, model_fingerprint, write_cache
    from mmie.directions import fit_layer_directions, save_directions
    from mmie.hooks import check_layers
    from mmie.models import load_model

    t0 = time.time()
    torch.set_num_threads(config["resources"]["torch_threads"])
    act = config["layers"]["activations"]
    lm = load_model(config["model"], model_dir)
    check_layers(lm.model, [layer])
    fp = model_fingerprint(lm.model)
    roles = cache_roles(config, data_dir, act["max_texts"])
    acts = {role: collect(lm.model, lm.tokenizer, texts, [layer], max_length=act["max_length"],
                          batch_size=act["batch_size"], desc=f"layer {layer} {role}")[layer]
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
        "dim_norm": float(directions["dim"].norm()),
        "provenance": provenance.build(config, section(config, "layers", "model", "data"), runtime=lm.runtime,
                                       rule="cache_activations",
                                       inputs=[Path(data_dir) / r / "train.jsonl" for r in ("forget", "retain")]),
    })


def sweep_gate(config: dict, arm_name: str, seed: int, model_dir: str | None, sets_dir: str, lid_detector: str,
               results_root: str, out: str) -> None:
    """Dose-response of an SAE gate arm: target rate on forget prompts and retain perplexity for each
    alpha in gate.sweep_alphas, for the arm's features and for as many random features (the control)."""
    import torch

    from mmie.activations import model_fingerprint
    from mmie.arms.edit_arms import LayerAssets, layer_edits
    from mmie.generation import Decoding, generate, special_prefix
    from mmie.hooks import edit_layer_outputs
    from mmie.lid import load_lid
    from mmie.likelihood import perplexity, score_sequences
    from mmie.models import load_model
    from mmie.seeding import seed_everything

    t0 = time.time()
    torch.set_num_threads(config["resources"]["torch_threads"])
    seed_everything(seed, config["deterministic"])
    spec = config["arms"][arm_name]
    g = config["gate"]
    lm = load_model(config["model"], model_dir)
    model, tok = lm.model, lm.tokenizer
    lid = load_lid(config["lid"], config["languages"], lid_detector)
    assets = LayerAssets.under(results_root)   # loads each layer's SAE once for every sweep point
    fingerprint = model_fingerprint(model)
    n = g["sweep_prompts"]
    prompts = io.read_jsonl(Path(sets_dir) / "forget.jsonl")[:n]
    retain = [r for r in io.read_jsonl(Path(sets_dir) / "retain.jsonl") if r.get("text")][:n]
    prefix = special_prefix(tok)
    retain_ids = [tok(r["text"], add_special_tokens=False)["input_ids"] for r in retain]
    decoding = Decoding.from_config(config["generation"])
    ev = config["eval"]
    rows = []
    for method in ("sae_gate", "random_gate"):
        for alpha in g["sweep_alphas"]:
            fns, used = layer_edits(config, spec, model, assets, seed, alpha=alpha, method=method,
                                    fingerprint=fingerprint)
            with edit_layer_outputs(model, fns):
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
                                                       inputs=[Path(sets_dir) / "forget.jsonl"])})
