"""GPU-hours of a config's full grid, predicted from per-job token counts and measured throughputs.

    python benchmarks/bench.py > bench.jsonl                        # on the GPU (one JSON line per figure)
    python benchmarks/cost_model.py config/qwen2.5-1.5b-a100.yaml --throughputs bench.jsonl

The token counts come from the config alone and are upper bounds: every evaluation set holds
``eval.max_prompts`` prompts, every prompt generates ``generation.max_new_tokens`` tokens and every
text fills its token budget (``eval.max_length``, ``arms.<arm>.train.max_length``,
``layers.activations.max_length``). Each token kind is divided by the throughput ``bench.py``
measures for it:

    generate  (prompts x new tokens)          / generation_tokens_per_s (mmie_batched)
    forward   (likelihood and cache passes)   / activation_cache_tokens_per_s (a no-grad forward)
    train     (unlearning steps)              / lora_training_tokens_per_s (ReFT is priced at LoRA's rate)
    sae       (SAE training tokens)           / sae_training_tokens_per_s

    GPU seconds of a job = generate/g + forward/f + train/t + sae/s + job_overhead_s
    GPU-hours of the grid = sum over rules of jobs x GPU seconds of a job / 3600

``job_overhead_s`` (interpreter start-up, model load) is an input, 0 unless given. CPU-only rules
(score, stats, plots, the judge) are not priced. The prediction is only as good as the throughputs:
bench.py measures them on a model of Qwen2.5-1.5B's shape with short prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# token kind -> (bench.py figure, method)
FIGURES = {"generate": ("generation_tokens_per_s", "mmie_batched"), "forward": ("activation_cache_tokens_per_s", None),
           "train": ("lora_training_tokens_per_s", None), "sae": ("sae_training_tokens_per_s", None)}
KINDS = tuple(FIGURES)


def read_throughputs(path: str | Path) -> dict:
    """Tokens/s per token kind from bench.py's output (JSON lines; other lines are ignored), or from a
    JSON object ``{"generate": .., "forward": .., "train": .., "sae": .., "device": ..}``."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and "figure" not in obj:
        out = {k: float(obj[k]) for k in KINDS if k in obj}
        out["device"] = obj.get("device", "unknown")
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        out = {"device": ", ".join(sorted({r.get("device", "unknown") for r in rows})) or "unknown"}
        for kind, (figure, method) in FIGURES.items():
            for r in rows:
                if r.get("figure") == figure and r.get("method") == method:
                    out[kind] = float(r["value"])
    missing = [f"{k} ({FIGURES[k][0]})" for k in KINDS if not out.get(k)]
    if missing:
        raise ValueError(f"{path}: no positive throughput for {', '.join(missing)}; give bench.py's output "
                         f"(python benchmarks/bench.py > bench.jsonl) or a JSON object with keys {list(KINDS)}")
    return out


def grid(config: dict) -> dict:
    """The arms of each job family, as rules/common.smk builds them (mmie.config.arm_groups)."""
    from mmie.config import arm_groups

    g = arm_groups(config)
    return {"arms": g["arms"], "trained": g["trained"], "layer_arms": g["layer_arms"], "gate": g["sae"],
            "sweep": g["sweep"]}


def job_tokens(config: dict, model_layers: int) -> list[dict]:
    """One row per GPU rule: jobs and tokens of each kind per job (upper bounds, see the module doc)."""
    from mmie.arms import resolve_spec
    from mmie.config import set_names

    g = grid(config)
    seeds = len(config["seeds"])
    ev, gen = config["eval"], config["generation"]
    n_sets, prompts, new, ev_len = len(set_names(config)), ev["max_prompts"], gen["max_new_tokens"], ev["max_length"]
    neighbours = len(config["languages"].get("neighbours", {}))
    sel, act = config["layers"]["selection"], config["layers"]["activations"]
    forced = config["layers"]["force_layers"]
    n_layers = len(forced) if forced else sel["n_layers"]
    rows = [{
        # generation of every set; reference texts and outputs (with their prompt) under the base model;
        # the base pass of the retain KL; membership inference on members and non-members
        "rule": "evaluate", "jobs": len(g["arms"]) * seeds, "generate": n_sets * prompts * new,
        "forward": n_sets * prompts * ev_len + n_sets * prompts * (ev_len + new) + prompts * ev_len
        + 2 * ev["mia_max_items"] * ev_len}]
    for arm in g["trained"]:
        t = resolve_spec(config["arms"][arm])["train"]
        evals = t["max_steps"] // t["eval_every"] + 2   # held-out checks: before step 1, every eval_every, last step
        rows.append({"rule": f"train ({arm})", "jobs": seeds,
                     "train": t["max_steps"] * t["batch_size"] * t["max_length"] * 2,   # forget + retain batch
                     "forward": evals * 2 * t["heldout_items"] * t["max_length"]})
    if g["layer_arms"]:
        if not forced:
            candidates = len(sel["candidates"] or range(model_layers))
            rows.append({"rule": "select_layers", "jobs": 1,
                         "generate": (1 + sel["resamples"] * candidates) * sel["causal_prompts"] * sel["causal_max_new_tokens"],
                         "forward": (2 + neighbours) * sel["max_texts"] * act["max_length"]})
        roles = 4 + neighbours   # forget, forget_romanized, retain, gibberish, each neighbour
        rows.append({"rule": "cache_activations", "jobs": n_layers, "forward": roles * act["max_texts"] * act["max_length"]})
    if g["gate"]:
        rows.append({"rule": "train_sae", "jobs": n_layers, "sae": config["sae"]["train_tokens"]})
    if g["sweep"]:
        gate = config["gate"]
        points = 2 * len(gate["sweep_alphas"])   # the arm's features and the random control at each alpha
        rows.append({"rule": "sweep_gate", "jobs": len(g["sweep"]) * seeds,
                     "generate": points * gate["sweep_prompts"] * new, "forward": points * gate["sweep_prompts"] * ev_len})
    for r in rows:
        for k in KINDS:
            r.setdefault(k, 0)
    return rows


def predict(config: dict, throughputs: dict, model_layers: int, job_overhead_s: float = 0.0) -> dict:
    rows = job_tokens(config, model_layers)
    for r in rows:
        r["gpu_s_per_job"] = sum(r[k] / throughputs[k] for k in KINDS) + job_overhead_s
        r["gpu_h"] = r["jobs"] * r["gpu_s_per_job"] / 3600
    total = sum(r["gpu_h"] for r in rows)
    if not math.isfinite(total):
        raise ValueError(f"the cost model gave a non-finite total ({total}); check the throughputs {throughputs}")
    return {"rows": rows, "gpu_hours": total, "throughputs": throughputs, "job_overhead_s": job_overhead_s}


def tokens_markdown(rows: list[dict], config_name: str) -> str:
    """The per-job token counts alone (no throughputs, no GPU-hours)."""
    lines = [f"### Tokens per GPU job: {config_name}", "",
             "| rule | jobs | generate tok/job | forward tok/job | train tok/job | SAE tok/job |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['generate']:,} | {r['forward']:,} | {r['train']:,} | {r['sae']:,} |")
    return "\n".join(lines + [""])


def markdown(pred: dict, config_name: str) -> str:
    tp = pred["throughputs"]
    lines = [f"### Predicted GPU-hours: {config_name}", "",
             f"Throughputs (tokens/s, {tp['device']}): " + ", ".join(f"{k} {tp[k]:,.0f}" for k in KINDS)
             + f"; job overhead {pred['job_overhead_s']:g} s.", "",
             "| rule | jobs | generate tok/job | forward tok/job | train tok/job | SAE tok/job | GPU s/job | GPU-h |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in pred["rows"]:
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['generate']:,} | {r['forward']:,} | {r['train']:,} | {r['sae']:,} "
                     f"| {r['gpu_s_per_job']:,.1f} | {r['gpu_h']:.2f} |")
    lines += [f"| **total** | {sum(r['jobs'] for r in pred['rows'])} | | | | | | **{pred['gpu_hours']:.2f}** |", ""]
    return "\n".join(lines)


def model_layers_of(path: str | Path) -> int:
    return int(json.loads(Path(path).read_text())["num_hidden_layers"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="+", help="config files, merged in order (as snakemake --configfile does)")
    ap.add_argument("--throughputs", help="bench.py output (JSON lines) or a JSON object; without it, token counts only")
    ap.add_argument("--model-config", default=str(Path(__file__).parent.parent / "config" / "models" / "qwen2.5-1.5b-instruct.json"),
                    help="the model's config.json (num_hidden_layers: the layer-selection candidates)")
    ap.add_argument("--job-overhead-s", type=float, default=0.0, help="start-up and model load per GPU job")
    args = ap.parse_args(argv)
    config, layers, name = load_configs(args.config), model_layers_of(args.model_config), " + ".join(args.config)
    if args.throughputs is None:
        print(tokens_markdown(job_tokens(config, layers), name))
        return
    print(markdown(predict(config, read_throughputs(args.throughputs), layers, args.job_overhead_s), name))


def load_configs(paths: list[str]) -> dict:
    """The configs merged in order and validated with the schema's defaults (mmie.config.load)."""
    import yaml

    from mmie.config import deep_update, load

    merged: dict = {}
    for p in paths[1:]:
        merged = deep_update(merged, yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {})
    return load(paths[0], merged)


if __name__ == "__main__":
    main()
