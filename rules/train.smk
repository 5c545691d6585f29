# Trained arms: one job per (arm, seed), each writing its own checkpoint directory (never shared
# between seeds). Deleting a checkpoint and asking for one of its metric files reruns exactly that
# seed's training and evaluation. ReFT's layers are the selected layers (layers/selection.json).
rule train_lora:
    input:
        model=model_dir,
        splits=SPLIT_FILES,
    output:
        directory(f"{R}/checkpoints/{{arm}}/seed{{seed}}"),
    wildcard_constraints:
        arm=arm_regex(LORA_ARMS),
    log:
        f"{R}/logs/train/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{arm}}/seed{{seed}}.tsv"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        settings=settings("model", "deterministic", arm=True),
        model_dir=model_dir_param,
    conda:
        "../envs/mmie.yaml"
    script:
        "../scripts/train.py"


rule train_reft:
    input:
        model=model_dir,
        splits=SPLIT_FILES,
        selection=reft_selection,
    output:
        directory(f"{R}/checkpoints/{{arm}}/seed{{seed}}"),
    wildcard_constraints:
        arm=arm_regex(REFT_ARMS),
    log:
        f"{R}/logs/train/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{arm}}/seed{{seed}}.tsv"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        settings=settings("model", "deterministic", arm=True),
        model_dir=model_dir_param,
    conda:
        "../envs/mmie.yaml"
    script:
        "../scripts/train.py"
