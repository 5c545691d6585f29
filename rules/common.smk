# Helpers: config validation, the grid, wildcard constraints and named input functions.
import re
from pathlib import Path

from snakemake.utils import validate

import mmie.config as mcfg

validate(config, str(Path(workflow.basedir) / "config" / "schema.yaml"), set_default=True)
mcfg.check(config)  # relative data paths are relative to the working directory

EXP = config["experiment"]
R = f"results/{EXP}"
ARMS = list(config["arms"])
SEEDS = [int(s) for s in config["seeds"]]
SETS = mcfg.set_names(config)
NEIGHBOURS = list(config["languages"]["neighbours"])
SPLIT_FILES = [f"{R}/data/{role}/{part}.jsonl" for role in ("forget", "retain") for part in ("train", "eval", "holdout")]
LORA_ARMS = [a for a, spec in config["arms"].items() if spec["method"] == "lora"]
REFT_ARMS = [a for a, spec in config["arms"].items() if spec["method"] == "reft"]
GPU_MEM = config["resources"]["gpu_mem_mb"]
CPU_MEM = config["resources"]["cpu_mem_mb"]


wildcard_constraints:
    arm="|".join(re.escape(a) for a in ARMS),
    seed=r"\d+",
    set="|".join(re.escape(s) for s in SETS),


def raw_data(wildcards):
    """Every raw input file named in the config (prepare_data reruns when one changes)."""
    return list(mcfg.raw_data_files(config).values())


def model_dir(wildcards=None):
    """The model folder a job loads: the demo model built by the workflow, or a local folder.
    A hub model (model.source: hub) is read from the Hugging Face cache and is no file input."""
    source = config["model"]["source"]
    if source in ("demo", "gemma3-270m"):
        return f"{R}/model"
    if source == "local":
        return config["model"]["path"]
    return []


def model_dir_param(wildcards=None):
    return model_dir() or None


def arm_regex(arms):
    # a pattern that matches nothing when the list is empty
    return "|".join(re.escape(a) for a in arms) or "(?!x)x"


def checkpoint_dir(wildcards):
    """The checkpoint an (arm, seed) evaluation loads; none for untrained arms."""
    if config["arms"][wildcards.arm]["method"] in ("lora", "reft"):
        return f"{R}/checkpoints/{wildcards.arm}/seed{wildcards.seed}"
    return []


def checkpoint_param(wildcards):
    return checkpoint_dir(wildcards) or None


def train_logs(wildcards=None):
    return expand(f"{R}/checkpoints/{{arm}}/seed{{seed}}", arm=LORA_ARMS + REFT_ARMS, seed=SEEDS)


def mia_for_set(wildcards):
    """Membership-inference scores feed the metrics of the forget set only."""
    return f"{R}/{wildcards.arm}/seed{wildcards.seed}/mia.jsonl" if wildcards.set == "forget" else []


def judge_for_set(wildcards):
    """The judge's scores, when the judge is enabled (judge.enabled: true)."""
    if config["judge"]["enabled"]:
        return f"{R}/{wildcards.arm}/seed{wildcards.seed}/{wildcards.set}/judge.json"
    return []


def eval_set_files(wildcards=None):
    return [f"{R}/data/eval_sets/{s}.jsonl" for s in SETS]


def all_metrics(wildcards=None):
    return expand(f"{R}/{{arm}}/seed{{seed}}/{{set}}/metrics.json", arm=ARMS, seed=SEEDS, set=SETS)


def final_outputs():
    out = [f"{R}/summary/metrics_long.csv", f"{R}/summary/summary.csv", f"{R}/summary/summary.md",
           f"{R}/summary/gates.csv", f"{R}/summary/decisions.json", f"{R}/summary/results.md",
           f"{R}/data/data_report.json", f"{R}/lid/lid_report.json"]
    out += expand(f"{R}/plots/{{name}}.png", name=PLOTS)
    return out


PLOTS = ["target_rate", "output_language", "perplexity", "lid_confusion", "es_ci", "tradeoff", "neighbours", "mia"] + (
    ["demo_training"] if config["model"]["source"] == "demo" else []
) + (["training_curves"] if LORA_ARMS + REFT_ARMS else [])


def plot_inputs(wildcards):
    return {"long": f"{R}/summary/metrics_long.csv", "lid": f"{R}/lid/lid_report.json",
            "intervals": f"{R}/summary/intervals.csv"}
