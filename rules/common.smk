# Helpers: config validation, the grid, wildcard constraints and named input functions.
import os
import re
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

import mmie.attacks as attacks
import mmie.config as mcfg
from mmie.arms import methods
from mmie import numerics, preflight
import mmie.data.corpus as mdata
import mmie.jobs as mjobs
import mmie.failures as mfailures

mcfg.with_demo(config, "config.yaml")  # no study given: the demo (relative to the working directory, snakemake -d)
mcfg.refuse_renamed(config)  # a key of an older mmie: the message names its new name
validate(config, str(Path(workflow.basedir) / "config" / "schema.yaml"), set_default=True)
numerics.apply(config)  # portable CPU numerics: in the environment before any job imports torch (every parse)
if not preflight.checked(config):  # once per run: a cluster job's parse of this file skips them (mmie/preflight.py)
    mcfg.check(config)  # relative data paths are relative to the working directory
    preflight.check(config)  # layer indices and LoRA targets against the model's architecture
    preflight.mark_checked(config)
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    # jobs import mmie from this workflow's folder: the environment of envs/ does not install it
    os.environ.update(PYTHONPATH=mcfg.with_workflow_on_path(workflow.basedir))

EXP = config["experiment"]
R = f"results/{EXP}"
ARMS = list(config["arms"])
SEEDS = [int(s) for s in config["seeds"]]
SETS = mcfg.set_names(config)
NEIGHBOURS = list(config["languages"]["neighbours"])
NEIGHBOUR_ROLES = [f"neighbour_{code}" for code in NEIGHBOURS]
# every split file prepare_data writes
SPLIT_FILES = mdata.split_paths(f"{R}/data", mdata.split_roles(NEIGHBOURS), mdata.SPLITS)
# what fitting and choosing jobs may read: train and dev parts only (never test or holdout)
TRAIN_FILES = mdata.split_paths(f"{R}/data", ["forget", "retain", *NEIGHBOUR_ROLES], ["train"])
DEV_FILES = mdata.split_paths(f"{R}/data", ["forget", "retain", *NEIGHBOUR_ROLES], ["dev"])
FIT_FILES = mdata.split_paths(f"{R}/data", ["forget", "retain"], ["train", "dev"])
# the dev texts of every language (romanized target included): human text of fluency_ratio's references
DEV_TEXTS = mdata.split_paths(f"{R}/data", mdata.split_roles(NEIGHBOURS), ["dev"])
# arm lists, from the method declarations (mmie/arms/methods/<method>.py; mmie.config.arm_groups)
GROUPS = mcfg.arm_groups(config)
TRAINED_ARMS = GROUPS["trained"]  # a train job per (arm, seed): checkpoints/<arm>/seed<k>
LAYER_ARMS = GROUPS["layer_arms"]  # arms that read the layer selection
GATE_ARMS = GROUPS["sae"]  # arms that need each selected layer's SAE and features
SWEEP_ARMS = GROUPS["sweep"]  # arms with a dose-response sweep (dev data)
GPU_MEM = config["resources"]["model_job_mem_mb"]


def gpu_mem(wildcards, attempt):
    """Host memory of a model job: the configured amount, doubled on each retry (--retries)."""
    return GPU_MEM * 2 ** (attempt - 1)


def cpu_mem(wildcards, attempt):
    return CPU_MEM * 2 ** (attempt - 1)


CPU_MEM = config["resources"]["light_job_mem_mb"]
TORCH_THREADS = config["resources"]["torch_threads"]  # threads: of the torch rules (jobs use snakemake.threads)
# Scheduling only (which ready job starts first when there are more than cores; nothing computed
# changes): the heads of the longest chains go first, so that no core waits at the end for a chain
# that started late (measured: the oracle's model, built last, kept one of two cores idle 40 s).
# Snakemake maximises the summed priority of the jobs it starts together: the oracle's build takes
# two threads, so its priority exceeds any two others' (else two small jobs always win the cores).
PRIORITY = {
    "build_oracle_model": 100,
    "tune": 40,
    "select_layers": 30,
    "cache_activations": 30,
    "train_sae": 30,
    "select_features": 30,
    "sweep_gate": 30,
    "train": 20,
    "attack": 10,
}


wildcard_constraints:
    arm="|".join(re.escape(a) for a in ARMS),
    seed=r"\d+",
    layer=r"\d+",
    set="|".join(re.escape(s) for s in SETS),


def job_settings(rule):
    """A rule's rerun trigger (``params: settings``): the config sections its job function declares
    (``@job(...)`` in mmie/jobs/<rulesfile>.py), and for an arm job the wildcard arm's settings and
    those of the arm it sits on (``on:``). Snakemake's params trigger then reruns the job when one
    of them changes (config is not tracked otherwise); its provenance records the same values."""
    declared = mjobs.declaration(rule)

    def params(wildcards):
        return mjobs.settings_json(config, rule, wildcards.arm if declared.arm else None)

    return params


def failure_token(rule):
    """A tolerant rule's rerun trigger (``params: failed``): the time of the job's latest recorded
    failure (mmie/failures.py), so a failed job reruns on the next call and by its target path."""

    def params(wildcards):
        return mfailures.token(R, rule, dict(wildcards.items()))

    return params


def print_failures():
    """The unresolved failure records of this experiment, loudly (onsuccess/onerror of the Snakefile)."""
    text = mfailures.banner(R)
    if text:
        print(text, file=sys.stderr)


def raw_data(wildcards):
    """Every raw input file named in the config that prepare_data reads (it reruns when one changes);
    the LID audit set is fit_lid's input only."""
    return [p for role, p in mcfg.raw_data_files(config).items() if role != "lid_audit"]


def lid_audit_input(wildcards=None):
    """data.lid_audit (hand-labelled generations) when set: fit_lid reruns when it changes."""
    return config["data"]["lid_audit"] or []


def model_dir(wildcards=None):
    """The model folder a job loads: the demo model built by the workflow, or a local folder.
    A hub model (model.source: hub) is read from the Hugging Face cache and is no file input."""
    source = config["model"]["source"]
    if source in ("demo", "gemma3-270m"):
        return f"{R}/model"
    if source == "local":
        return config["model"]["path"]
    return []


# models the workflow builds for an arm besides the base model, by the name a method's declaration asks
# for (Method.files): the oracle's (rules/model.smk build_oracle_model), only for the demo model
BUILT_MODELS = {"oracle": f"{R}/oracle_model"} if config["model"]["source"] == "demo" else {}


def arm_regex(arms):
    # a pattern that matches nothing when the list is empty
    return "|".join(re.escape(a) for a in arms) or "(?!x)x"


def method_of(arm):
    """The declaration of an arm's method (mmie/arms/methods/<method>.py)."""
    return methods.of(config, arm)


def checkpoint_dir(wildcards):
    """The checkpoint an (arm, seed) evaluation loads: its own when trained, the trained arm's
    for a gate that sits on one (``on:``, e.g. lora+sae_gate), none otherwise."""
    spec = config["arms"][wildcards.arm]
    trained = method_of(wildcards.arm).trains
    if trained or spec.get("on"):
        return f"{R}/checkpoints/{wildcards.arm if trained else spec['on']}/seed{wildcards.seed}"
    return []


def layer_selection_if_used(wildcards=None):
    """The layer-selection artifact when some arm uses the selected layers (the results page reports
    the choice and its stability), else nothing."""
    return selection_file() if LAYER_ARMS else []


def features_if_used(wildcards=None):
    """Each selected layer's features file when some arm gates with an SAE (the results page explains
    how many latents the gate took), else nothing."""
    return expand(f"{R}/sae/features/layer{{layer}}.json", layer=selected_layers()) if GATE_ARMS else []


def selection_file(wildcards=None):
    return f"{R}/layers/selection.json"


def selected_layers():
    """The layers the select_layers checkpoint chose (Snakemake re-evaluates the DAG after it)."""
    import json

    with open(checkpoints.select_layers.get().output[0]) as fh:
        return [int(x) for x in json.load(fh)["layers"]]


def gibberish_file(wildcards=None):
    return config["data"]["gibberish"] or []


# where each layer asset a method can declare (mmie.arms.method.ASSETS) is written
ASSET_FILES = {
    "sae": f"{R}/sae/layer{{layer}}",
    "features": f"{R}/sae/features/layer{{layer}}.json",
    "directions": f"{R}/acts/layer{{layer}}.directions.safetensors",
}


def layer_asset_inputs(method, layers):
    """The layer assets ``method`` declares at each of ``layers``, and the layer selection, as named
    inputs: ``selection`` and ``<asset><layer>`` (e.g. ``sae3``, ``features3``): the job maps them
    back to layers (mmie.arms.edit_arms.LayerAssets.from_inputs)."""
    out = {"selection": selection_file()}
    for asset in methods.method(method).layer_assets:
        for layer in layers:
            out[f"{asset}{layer}"] = ASSET_FILES[asset].format(layer=layer)
    return out


def edit_inputs(wildcards):
    """What an (arm, seed) evaluation needs besides the model: the layer selection and, for an edit
    arm, each selected layer's SAE and features or fitted directions (named: layer_asset_inputs)."""
    if wildcards.arm not in LAYER_ARMS:
        return {}
    spec = config["arms"][wildcards.arm]
    return layer_asset_inputs(spec["method"], spec.get("layers") or selected_layers())


def method_files(wildcards):
    """Input files an arm's method declares besides the model (an external arm's adapter or model
    folder, the oracle's built model: a change reruns its evaluation)."""
    declared = method_of(wildcards.arm)
    return declared.files(config["arms"][wildcards.arm], BUILT_MODELS) if declared.files else []


def train_runtime(wildcards, attempt):
    """A train job's wall-clock limit in minutes (SLURM): its method's declaration, times the attempt."""
    return method_of(wildcards.arm).train_minutes * attempt


def selection_if_read(wildcards):
    """The layer selection, when the arm reads it (its method's declaration)."""
    return selection_file() if wildcards.arm in LAYER_ARMS else []


def tune_if_tuned(wildcards):
    """The arm's tune result (rules/tune.smk), when its train block has a tune grid: every seed trains with its choice."""
    return f"{R}/tune/{wildcards.arm}.json" if wildcards.arm in mcfg.tuned_arms(config) else []


def tuned_run_if_reused(wildcards):
    """At the tuning seed (the first), the tune job's run of the chosen point: the train job takes it as its
    checkpoint instead of training the very same run again (mmie.jobs.train.train)."""
    if wildcards.arm in mcfg.tuned_arms(config) and int(wildcards.seed) == SEEDS[0]:
        return f"{R}/tune/{wildcards.arm}.chosen"
    return []


def sweep_inputs(wildcards):
    spec = config["arms"][wildcards.arm]
    return {
        "model": model_dir(),
        "splits": mdata.split_paths(f"{R}/data", ["forget", "retain"], ["dev"]),
        "detector": f"{R}/lid/romanized_detector.json",
        **layer_asset_inputs(spec["method"], spec.get("layers") or selected_layers()),
    }


def sae_report_inputs(wildcards):
    layers = selected_layers()
    gates = bool(GATE_ARMS)
    return {
        "selection": selection_file(),
        "quality": expand(f"{R}/sae/quality/layer{{layer}}.json", layer=layers) if gates else [],
        "features": expand(f"{R}/sae/features/layer{{layer}}.json", layer=layers) if gates else [],
        "sweeps": expand(f"{R}/sweep/{{arm}}/seed{{seed}}.json", arm=SWEEP_ARMS, seed=SEEDS),
    }


def trained_checkpoints(wildcards=None):
    """Every trained arm's checkpoint folder, every seed (their training logs feed the training curves)."""
    return expand(f"{R}/checkpoints/{{arm}}/seed{{seed}}", arm=TRAINED_ARMS, seed=SEEDS)


def judge_files(wildcards):
    """Every set's judge scores of an (arm, seed), when the judge is enabled (judge.enabled: true)."""
    if config["judge"]["enabled"]:
        return expand(f"{R}/{wildcards.arm}/seed{wildcards.seed}/{{s}}/judge.json", s=SETS)
    return []


def eval_set_files(wildcards=None):
    return [f"{R}/data/eval_sets/{s}.jsonl" for s in SETS]


def all_metrics(wildcards=None):
    """Every (arm, seed, set) metrics file: a seed-independent arm (mmie.config.is_seeded) only for
    the first configured seed, a seeded arm for every seed."""
    return [f"{R}/{arm}/seed{seed}/{s}/metrics.json" for arm in ARMS for seed in mcfg.arm_seeds(config, arm) for s in SETS]


def sample_generations(wildcards=None):
    """Every set's generations of every arm at the arm's first seed (the report's side-by-side samples)."""
    return [f"{R}/{arm}/seed{mcfg.arm_seeds(config, arm)[0]}/{s}/generations.jsonl" for arm in ARMS for s in SETS]


# robustness attacks (rules/robustness.smk, mmie/attacks): the arms attacked and every attack result
ATTACK_RUNS = attacks.attack_runs(config)
ATTACKED_ARMS = attacks.attacked_arms(config)
# one attack job per (arm, seed) (the attack rule); at later seeds of a deterministic arm only the seeded
# attacks run (the attack_seeded rule). Output lists cannot be empty; with nothing to run, the arm
# pattern matches nothing.
ATTACKS_RUN = [a for a in attacks.ATTACKS if a in config["robustness"]["attacks"]]
SEEDED_ATTACKS_RUN = [a for a in ATTACKS_RUN if a in attacks.SEEDED]
ATTACK_SEEDS = sorted({seed for _, _, seed in ATTACK_RUNS})
LATER_ATTACK_SEEDS = ATTACK_SEEDS[1:]
DETERMINISTIC_ATTACKED_ARMS = (
    [a for a in ATTACKED_ARMS if not mcfg.is_seeded(config, a)] if SEEDED_ATTACKS_RUN and LATER_ATTACK_SEEDS else []
)
ATTACKS_RUN = ATTACKS_RUN or list(attacks.ATTACKS)
SEEDED_ATTACKS_RUN = SEEDED_ATTACKS_RUN or sorted(attacks.SEEDED)

# the probe's texts: train (fit), dev (C) and test (score) of the target (in its script and romanized), the
# retain language and each neighbour
PROBE_FILES = mdata.split_paths(f"{R}/data", ["forget", "forget_romanized", "retain", *NEIGHBOUR_ROLES], ["train", "dev", "test"])


def attack_results(wildcards=None):
    return [f"{R}/{arm}/seed{seed}/robustness/{attack}.json" for attack, arm, seed in ATTACK_RUNS]


def robustness_if_run(wildcards=None):
    """The robustness readings for the results page, when the study runs attacks."""
    return f"{R}/summary/robustness_readings.csv" if ATTACK_RUNS else []


# utility through lm-evaluation-harness (rules/utility.smk): one job per (arm, seed) when utility.tasks is set
UTILITY_TASKS = list(config["utility"]["tasks"])


def utility_results(wildcards=None):
    """Every (arm, seed) utility result (a seed-independent arm only at the first seed, as its evaluation)."""
    if not UTILITY_TASKS:
        return []
    return [f"{R}/{arm}/seed{seed}/utility.json" for arm in ARMS for seed in mcfg.arm_seeds(config, arm)]


def utility_task_files(wildcards=None):
    """The files of utility.include_path (the user's lm-eval task YAMLs and their data): a change reruns the jobs."""
    folder = config["utility"]["include_path"]
    if not folder:
        return []
    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def final_outputs():
    out = [
        f"{R}/summary/samples.html",
        f"{R}/summary/headline.tex",
        f"{R}/summary/metrics_long.csv",
        f"{R}/summary/summary.csv",
        f"{R}/summary/summary.md",
        f"{R}/summary/gates.csv",
        f"{R}/summary/decisions.json",
        f"{R}/summary/results.md",
        f"{R}/data/data_report.json",
        f"{R}/lid/lid_report.json",
    ]
    out += expand(f"{R}/plots/{{name}}.png", name=PLOTS)
    if LAYER_ARMS:
        out += [f"{R}/summary/sae_quality.csv", f"{R}/plots/layer_selection.png"]
    if ATTACK_RUNS:
        out += [f"{R}/summary/robustness.csv", f"{R}/plots/robustness.png"]
    if TRAINED_ARMS:
        out.append(f"{R}/export")
    if config["tracking"]["backend"] != "none":
        out.append(f"{R}/tracking/tracked.json")
    if UTILITY_TASKS:
        out.append(f"{R}/summary/utility.csv")
    return out


# the figures of the plots job, each with its report category; the job's outputs and report()
# entries (caption report/<name>.rst) are generated from this table; each PNG also as PDF, for a paper
PLOT_RULE_FIGURES = {
    "target_rate": "Plots",
    "output_language": "Plots",
    "perplexity": "Plots",
    "lid_confusion": "Language ID",
    "es_ci": "Results",
    "tradeoff": "Results",
    "neighbours": "Results",
    "mia": "Results",
}
PLOTS = (
    list(PLOT_RULE_FIGURES)
    + (["demo_training"] if config["model"]["source"] == "demo" else [])
    + (["training_curves"] if TRAINED_ARMS else [])
)


def plot_inputs(wildcards):
    return {"long": f"{R}/summary/metrics_long.csv", "lid": f"{R}/lid/lid_report.json", "intervals": f"{R}/summary/intervals.csv"}


# per-study tuning (rules/tune.smk)
TUNED_ARMS = mcfg.tuned_arms(config)


def tune_runtime(wildcards, attempt):
    """A tune job's wall-clock limit in minutes (SLURM): one train job's per grid point, times the attempt."""
    from mmie.arms import tuning, resolve_spec

    points = len(tuning.grid(resolve_spec(config["arms"][wildcards.arm])))
    return method_of(wildcards.arm).train_minutes * points * attempt
