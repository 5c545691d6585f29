"""Job functions of rules/sae.smk: select_layers, cache_activations, train_sae, select_features, sweep_gate, sae_report (docs/method.md §7).
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmie import io, provenance
from mmie.errors import DataError, ModelError
from mmie.jobs import JobConfig, job, read_declared_split, splits_by_role
from mmie.sae.holdout import NOT_TRAINED_ON, draw_holdout_texts, sae_seed, split_holdout_tokens, verified_holdout_texts

log = logging.getLogger(__name__)


@job("model", "layers", "generation", "judge.model", "data.seed", "eval.prompt_fraction", "deterministic",
     "languages", when={"judge": "layers.selection.judge_weight"})
def select_layers(config: JobConfig, model_dir: str | None, splits, out: str,
                  judge_cache_dir: str | None = None) -> None:
    """The layer-selection checkpoint: one artifact with every score, each candidate's selection
    frequency, the margin, ties, ``stable`` and the chosen layers, from the dev parts of ``splits``
    (the rule's split files) only. With ``layers.force_layers`` set it records the forced layers and
    loads no model."""
    from mmie.sae import layers

    if config["layers"]["force_layers"]:
        result = layers.forced(config)
        runtime, used = {}, None
    else:

        from mmie.data.corpus import split_dir
        from mmie.model.loading import load_model
        from mmie.seeding import seed_everything

        seed_everything(config["data"]["seed"], config["deterministic"])
        sel = config["layers"]["selection"]
        lm = load_model(config["model"], model_dir)
        neighbours = [f"neighbour_{c}" for c in config["languages"].get("neighbours", {})]
        files = splits_by_role(splits)
        dev = {role: read_declared_split(files, role, "dev", "select_layers")[:sel["max_texts"]]
               for role in ("forget", "retain", *neighbours)}
        texts = {"target": dev["forget"], "retain": dev["retain"], "neighbours": [t for r in neighbours for t in dev[r]]}
        used = {f"{split_dir(role)}/dev": t for role, t in dev.items()}
        judge = None
        if sel["judge_weight"] > 0:
            from mmie.lang.judge import Judge

            if not config["judge"]["enabled"]:
                raise ModelError("layers.selection.judge_weight > 0 needs judge.enabled: true")
            judge = Judge.from_config(config["judge"], config["languages"]["target"].get("name", "the target language"),
                                      judge_cache_dir or config["judge"]["cache_dir"])
        result = layers.select(config, lm, texts, judge)
        if judge is not None:
            result["judge_calls"] = judge.calls
        runtime = lm.runtime
        log.info("chosen layers %s (frequency %s, stable %s)", result["layers"], result["frequency"], result["stable"])
    result["provenance"] = provenance.build(config, runtime=runtime,
                                            rule="select_layers", seed=config["data"]["seed"], texts=used)
    io.write_json(out, result)


@job("model", "layers.activations", "data.gibberish", "data.max_line_bytes", "data.seed", "lid.romanization",
     "languages")
def cache_activations(config: JobConfig, layer: int, model_dir: str | None, splits, out: str,
                      directions_out: str, meta_out: str) -> None:
    """Token-level activations of one layer for every cached role (written once), and the
    directions fitted on them (difference in means, script eraser). ``splits``: the rule's train
    split files."""

    from mmie.arms.fingerprint import model_fingerprint
    from mmie.model.hooks import check_layers
    from mmie.model.loading import load_model
    from mmie.sae.activations import cache_roles, collect, write_cache
    from mmie.sae.directions import fit_layer_directions, save_directions

    t0 = time.time()
    act = config["layers"]["activations"]
    lm = load_model(config["model"], model_dir)
    check_layers(lm.model, [layer])
    fp = model_fingerprint(lm.model)
    files = splits_by_role(splits)
    roles = cache_roles(config, lambda role: read_declared_split(files, role, "train", "cache_activations"), act["max_texts"])
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
        "provenance": provenance.build(config, runtime=lm.runtime, rule="cache_activations",
                                       inputs=[files[r, "train"] for r in ("forget", "retain")],
                                       texts=roles),
    })


@job("model", "gate", "generation", "eval", "lid", "deterministic", "languages", arm=True)
def sweep_gate(config: JobConfig, arm_name: str, seed: int, model_dir: str | None, splits, lid_detector: str,
               assets, out: str) -> None:
    """Dose-response of an SAE gate arm: target rate on forget/dev prompts and retain/dev perplexity for
    each alpha in gate.sweep_alphas, for the arm's own edit and for each of its method's
    ``sweep_controls`` (``random_gate``: as many random features) on the same layers. It informs the
    choice of gate.alpha, so it reads dev (``splits``), never the evaluation sets. ``assets``: the rule's
    named layer-asset inputs (``LayerAssets.from_inputs``)."""

    from mmie.arms.edit_arms import LayerAssets, layer_edits
    from mmie.arms.fingerprint import model_fingerprint
    from mmie.arms.methods import method as method_of
    from mmie.data.corpus import prompt_prefix
    from mmie.lang.lid import load_lid
    from mmie.model.generation import Decoding, generate, special_prefix
    from mmie.model.hooks import edit_layer_outputs
    from mmie.model.likelihood import perplexity, score_sequences
    from mmie.model.loading import load_model
    from mmie.seeding import seed_everything

    t0 = time.time()
    seed_everything(seed, config["deterministic"])
    spec = config["arms"][arm_name]
    g = config["gate"]
    lm = load_model(config["model"], model_dir)
    model, tok = lm.model, lm.tokenizer
    lid = load_lid(config["lid"], config["languages"], lid_detector)
    assets = LayerAssets.from_inputs(assets)   # loads each layer's SAE once for every sweep point
    fingerprint = model_fingerprint(model)
    n = g["sweep_prompts"]
    files = splits_by_role(splits)
    forget = io.read_jsonl(files["forget", "dev"])[:n]
    prompts = [{"id": r["id"], "prompt": prompt_prefix(r["text"], config["eval"]["prompt_fraction"])} for r in forget]
    retain = io.read_jsonl(files["retain", "dev"])[:n]
    prefix = special_prefix(tok)
    retain_ids = [tok(r["text"], add_special_tokens=False)["input_ids"] for r in retain]
    decoding = Decoding.from_config(config["generation"])
    ev = config["eval"]
    rows = []
    for method in (spec["method"], *method_of(spec["method"]).sweep_controls):
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
                        "provenance": provenance.build(config, seed=seed, runtime=lm.runtime, rule="sweep_gate",
                                                       inputs=[files["forget", "dev"], files["retain", "dev"]],
                                                       texts={"forget/dev": [r["text"] for r in forget],
                                                              "retain/dev": [r["text"] for r in retain]})})


@job("sae", "seeds", "deterministic")
def train_sae(config: JobConfig, layer: int, cache_path: str, out_dir: str) -> None:
    """Train the layer's SAE on every cached role except gibberish and the romanized target,
    holding out whole texts — ``sae.holdout_fraction`` of each role's cached texts (seeded; see
    ``mmie.sae.holdout.draw_holdout_texts``) — for the quality figures, which go into ``mmie.json``
    under ``quality``;
    the held-out text indices go under ``data.holdout_texts`` (``select_features`` computes loss
    recovered on them)."""
    import torch

    from mmie.model.loading import resolve_device
    from mmie.sae.activations import read_cache
    from mmie.sae.autoencoder import quality, save_sae
    from mmie.sae.autoencoder import train_sae as fit
    from mmie.seeding import seed_everything

    t0 = time.time()
    cfg = config["sae"]
    seed = sae_seed(config)
    seed_everything(seed, config["deterministic"])
    cache = read_cache(cache_path, layer=layer)
    roles = sorted(r for r in cache.acts if r not in NOT_TRAINED_ON)
    if not roles:
        raise DataError(f"activation cache {cache_path} has no roles to train an SAE on ({sorted(cache.acts)})")
    texts = draw_holdout_texts({r: cache.doc[r] for r in roles}, cfg["holdout_fraction"], seed,
                          source=f"activation cache {cache_path}")
    train, held = split_holdout_tokens(cache, roles, texts)
    n, n_hold = train.shape[0] + held.shape[0], held.shape[0]
    if train.shape[0] < 2 or n_hold == 0:
        raise DataError(f"activation cache {cache_path}: holding out texts {texts} leaves {train.shape[0]} training "
                        f"and {n_hold} held-out tokens; lower sae.holdout_fraction or cache more texts")
    device = resolve_device(cfg["device"])
    sae, stats = fit(train, cfg, seed, device)
    q = quality(sae, held)
    log.info("layer %d SAE on %d held-out tokens of %d held-out texts: %s", layer, n_hold,
             sum(len(t) for t in texts.values()), q)
    runtime = {"device": device, "tokens_per_s": stats["tokens_per_s"], "train_seconds": stats["seconds"],
               "job_seconds": round(time.time() - t0, 1)}
    meta = {
        "model_fingerprint": cache.meta["model_fingerprint"], "layer": layer, "seed": seed,
        "training": stats, "quality": {**q, "split": "held-out cached texts (never trained on)"},
        "data": {"roles": roles, "cached_tokens": int(n), "train_tokens": int(n - n_hold), "holdout_tokens": int(n_hold),
                 "holdout_fraction": cfg["holdout_fraction"], "holdout_texts": texts,
                 "train_texts": {r: int(len(torch.unique(cache.doc[r]))) - len(texts[r]) for r in roles},
                 "cache": str(cache_path)},
        "provenance": provenance.build(config, seed=seed, rule="train_sae",
                                       inputs=[cache_path], runtime=runtime),
    }
    save_sae(sae, out_dir, meta)


@job("model", "features", "sae.quality_texts", "layers.activations", "seeds", "deterministic")
def select_features(config: JobConfig, layer: int, model_dir: str | None, splits, cache_path: str, sae_dir: str,
                    features_out: str, quality_out: str) -> None:
    """Load the model once; check the cache and the SAE against its fingerprint; write the SAE's
    quality (held-out figures from training + loss recovered in the model on the first
    ``sae.quality_texts`` held-out forget/train texts and as many held-out retain/train texts: texts
    the SAE never trained on) and the selected features."""

    from mmie.arms.fingerprint import model_fingerprint
    from mmie.model.loading import load_model
    from mmie.sae.activations import read_cache
    from mmie.sae.autoencoder import WEIGHTS_FILE, load_sae, loss_recovered, read_meta
    from mmie.sae.features import select_features as choose
    from mmie.seeding import seed_everything

    t0 = time.time()
    seed = sae_seed(config)
    seed_everything(seed, config["deterministic"])
    lm = load_model(config["model"], model_dir)
    fp = model_fingerprint(lm.model)
    cache = read_cache(cache_path, layer=layer, fingerprint=fp)
    device = str(next(lm.model.parameters()).device)
    sae = load_sae(sae_dir, layer=layer, model_fingerprint=fp, d_in=cache.d_in, device=device)
    meta = read_meta(sae_dir)
    files = splits_by_role(splits)
    forget = [r["text"] for r in io.read_jsonl(files["forget", "train"])]
    retain = [r["text"] for r in io.read_jsonl(files["retain", "train"])]
    acts_cfg = config["layers"]["activations"]
    n_q = config["sae"]["quality_texts"]
    lr_texts = {role: verified_holdout_texts(cache, meta, role, rows, lm.tokenizer, acts_cfg["max_length"], n_q, str(sae_dir))
                for role, rows in (("forget", forget), ("retain", retain))}
    lr = loss_recovered(lm.model, lm.tokenizer, layer, sae,
                        [forget[i] for i in lr_texts["forget"]] + [retain[i] for i in lr_texts["retain"]],
                        max_length=acts_cfg["max_length"], batch_size=acts_cfg["batch_size"])
    log.info("layer %d loss recovered: %s", layer, lr)
    inputs = [cache_path, str(Path(sae_dir) / WEIGHTS_FILE), files["forget", "train"], files["retain", "train"]]
    held = meta["quality"]
    report = {"layer": layer, "fvu": held["fvu"], "l0": held["l0"], "dead_share": held["dead_share"],
              "mse": held["mse"], "holdout_tokens": held["tokens"], **lr,
              "holdout_texts": {r: len(t) for r, t in meta["data"]["holdout_texts"].items()},
              "loss_recovered_texts": lr_texts, "split": "held-out texts (never in SAE training)",
              "training": {k: meta["training"][k] for k in ("tokens", "steps", "seconds", "tokens_per_s", "final_mse")},
              "provenance": provenance.build(config, seed=seed, rule="select_features",
                                             inputs=inputs, runtime=lm.runtime)}
    fcfg = config["features"]
    result = choose(fcfg["method"], sae, cache, fcfg, model=lm.model, tok=lm.tokenizer, layer=layer,
                    forget_texts=forget, retain_texts=retain, seed=seed,
                    max_length=acts_cfg["max_length"], batch_size=acts_cfg["batch_size"])
    result["provenance"] = provenance.build(config, seed=seed,
                                            rule="select_features", inputs=inputs,
                                            texts={"forget/train": forget, "retain/train": retain},
                                            runtime={**lm.runtime, "job_seconds": round(time.time() - t0, 1)})
    io.write_json(quality_out, report)
    io.write_json(features_out, result)


@job()
def sae_report(config: JobConfig, selection_path: str, quality: list[str], features: list[str], sweeps: list[str],
        outputs: dict[str, str]) -> None:
    import matplotlib.pyplot as plt

    from mmie.failures import failure_figure, real
    from mmie.report.sae_report import features_table, plot_quality, plot_selection, plot_sweep, quality_table, sweep_table

    selection = io.read_json(selection_path)
    # a failed layer (train_sae/select_features) or sweep is left out, and named in the log and the figure
    quality, lost_q = real(list(quality))
    features, lost_f = real(list(features))
    sweeps, lost_s = real(list(sweeps))
    for r in lost_q + lost_f + lost_s:
        log.error("left out of the SAE report: %s %s failed: %s", r["rule"], r["wildcards"], r["error"])
    table = quality_table(quality)
    io.write_csv(outputs["table"], table)
    io.write_csv(outputs["features"], features_table(features))
    quality_fig = plot_quality(table) if quality else failure_figure("SAE quality", lost_q)
    sweep_fig = plot_sweep(sweep_table(sweeps)) if sweeps else failure_figure("Dose-response", lost_s)
    for key, fig in (("layer_selection", plot_selection(selection)), ("sae_quality", quality_fig),
                     ("dose_response", sweep_fig)):
        io.save_figure(outputs[key], fig)
        plt.close(fig)
