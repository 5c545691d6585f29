# Per-study tuning on dev data (docs/method.md §6 "Tuning"): one job per trained arm with a train.tune grid,
# at the study's first seed. Each grid point is trained on the forget/retain train texts and scored on
# their dev texts only (FIT_FILES: never test or holdout); the chosen lr and retain scale feed every
# seed's train job of the arm (rules/train.smk, tune_if_tuned); the chosen point's run itself is the first
# seed's checkpoint (tuned_run_if_reused: the train job at that seed copies it rather than train it again).
rule tune:
    input:
        model=model_dir,
        splits=FIT_FILES,
        selection=selection_if_read,
    output:
        record=f"{R}/tune/{{arm}}.json",
        chosen=directory(f"{R}/tune/{{arm}}.chosen"),
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
