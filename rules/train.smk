# Trained arms (every method whose declaration says `trains`: mmie/arms/methods/<method>.py): one job
# per (arm, seed), each writing its own checkpoint directory (never shared between seeds). Deleting a
# checkpoint and asking for one of its metric files reruns exactly that seed's training and
# evaluation. An arm that reads the layer selection (ReFT without its own layers) gets it as input.
rule train:
    input:
        model=model_dir,
        splits=SPLIT_FILES,
        selection=selection_if_read,
        tuned=tune_if_tuned,
        chosen=tuned_run_if_reused,
    output:
        directory(f"{R}/checkpoints/{{arm}}/seed{{seed}}"),
    log:
        f"{R}/logs/train/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{arm}}/seed{{seed}}.tsv"
    wildcard_constraints:
        arm=arm_regex(TRAINED_ARMS),
    priority: PRIORITY["train"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
        runtime=train_runtime,
    params:
        failed=failure_token("train"),
        settings=job_settings("train"),
    script:
        "../scripts/train.py"
