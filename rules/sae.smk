# Layers and sparse autoencoders (docs/method.md §7). Layer selection is a checkpoint: the SAE jobs, the
# gate arms' inputs and ReFT's layers follow the layers it chooses (layers.force_layers bypasses
# the scoring and is recorded in the same artifact).
checkpoint select_layers:
    input:
        model=model_dir,
        splits=DEV_FILES,
    output:
        f"{R}/layers/selection.json",
    log:
        f"{R}/logs/select_layers.log",
    benchmark:
        f"{R}/benchmarks/select_layers.tsv"
    priority: PRIORITY["select_layers"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        settings=job_settings("select_layers"),
        judge_cache=config["judge"]["cache_dir"],
    script:
        "../scripts/select_layers.py"


rule cache_activations:
    input:
        model=model_dir,
        splits=TRAIN_FILES,
        gibberish=gibberish_file,
    output:
        acts=f"{R}/acts/layer{{layer}}.safetensors",
        directions=f"{R}/acts/layer{{layer}}.directions.safetensors",
        meta=f"{R}/acts/layer{{layer}}.json",
    log:
        f"{R}/logs/cache_activations/layer{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/cache_activations/layer{{layer}}.tsv"
    priority: PRIORITY["cache_activations"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        settings=job_settings("cache_activations"),
    script:
        "../scripts/cache_activations.py"


rule train_sae:
    input:
        acts=f"{R}/acts/layer{{layer}}.safetensors",
    output:
        directory(f"{R}/sae/layer{{layer}}"),
    log:
        f"{R}/logs/train_sae/layer{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/train_sae/layer{{layer}}.tsv"
    priority: PRIORITY["train_sae"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("train_sae"),
        settings=job_settings("train_sae"),
    script:
        "../scripts/train_sae.py"


rule select_features:
    input:
        model=model_dir,
        splits=mdata.split_paths(f"{R}/data", ["forget", "retain"], ["train"]),
        acts=f"{R}/acts/layer{{layer}}.safetensors",
        sae=f"{R}/sae/layer{{layer}}",
    output:
        features=f"{R}/sae/features/layer{{layer}}.json",
        quality=f"{R}/sae/quality/layer{{layer}}.json",
    log:
        f"{R}/logs/select_features/layer{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/select_features/layer{{layer}}.tsv"
    priority: PRIORITY["select_features"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("select_features"),
        settings=job_settings("select_features"),
    script:
        "../scripts/select_features.py"


# Dose-response of each SAE gate arm on the base model: target rate and retain perplexity over
# gate.sweep_alphas, for the arm's features and for as many random features.
rule sweep_gate:
    input:
        unpack(sweep_inputs),
    output:
        f"{R}/sweep/{{arm}}/seed{{seed}}.json",
    log:
        f"{R}/logs/sweep_gate/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/sweep_gate/{{arm}}/seed{{seed}}.tsv"
    wildcard_constraints:
        arm=arm_regex(SWEEP_ARMS),
    priority: PRIORITY["sweep_gate"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("sweep_gate"),
        settings=job_settings("sweep_gate"),
    script:
        "../scripts/sweep_gate.py"


rule sae_report:
    input:
        unpack(sae_report_inputs),
    output:
        table=report(
            f"{R}/summary/sae_quality.csv",
            caption="../report/sae_quality.rst",
            category="Layers and SAEs",
        ),
        features=f"{R}/summary/sae_features.csv",
        layer_selection=report(
            f"{R}/plots/layer_selection.png",
            caption="../report/layer_selection.rst",
            category="Layers and SAEs",
        ),
        sae_quality=report(
            f"{R}/plots/sae_quality.png",
            caption="../report/sae_quality_plot.rst",
            category="Layers and SAEs",
        ),
        dose_response=report(
            f"{R}/plots/dose_response.png",
            caption="../report/dose_response.rst",
            category="Layers and SAEs",
        ),
        pdf=expand(f"{R}/plots/{{name}}.pdf", name=["layer_selection", "sae_quality", "dose_response"]),
    log:
        f"{R}/logs/sae_report.log",
    benchmark:
        f"{R}/benchmarks/sae_report.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("sae_report"),
    script:
        "../scripts/sae_report.py"
