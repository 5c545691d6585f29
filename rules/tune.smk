# Per-study tuning on dev data (docs/method.md §6 "Tuning"): one job per trained arm with a train.tune grid,
# at the study's first seed. Each grid point is trained on the forget/retain train texts and scored on
# their dev texts only (FIT_FILES: never test or holdout); the chosen lr and retain scale feed every
# seed's train job of the arm (rules/train.smk, tune_if_tuned).
rule tune:
    input:
        model=model_dir,
        splits=FIT_FILES,
        selection=selection_if_read,
    output:
        f"{R}/tune/{{arm}}.json",
    log:
        f"{R}/logs/tune/{{arm}}.log",
    benchmark:
        f"{R}/benchmarks/tune/{{arm}}.tsv"
    wildcard_constraints:
        arm=arm_regex(TUNED_ARMS),
    priority: PRIORITY["tune"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
        runtime=tune_runtime,
    params:
        failed=failure_token("tune"),
        settings=job_settings("tune"),
        seed=SEEDS[0],
    script:
        "../scripts/tune.py"
