# One model load per (arm, seed): every generation and likelihood pass of the arm happens in that
# job; the per-set scoring that follows imports no torch.
rule evaluate:
    input:
        unpack(edit_inputs),
        model=model_dir,
        eval_sets=eval_set_files,
        checkpoint=checkpoint_dir,
        method_files=method_files,
        mia=[f"{R}/data/forget/train.jsonl", f"{R}/data/forget/holdout.jsonl"],
        fluency=DEV_TEXTS,
    output:
        generations=expand(f"{R}/{{arm}}/seed{{seed}}/{{s}}/generations.jsonl", s=SETS, allow_missing=True),
        manifest=f"{R}/{{arm}}/seed{{seed}}/evaluate.json",
        mia=f"{R}/{{arm}}/seed{{seed}}/mia.jsonl",
    log:
        f"{R}/logs/evaluate/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{arm}}/seed{{seed}}.tsv"
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("evaluate"),
        settings=job_settings("evaluate"),
    script:
        "../scripts/evaluate.py"


# One job scores every set of an (arm, seed): one interpreter start and one LID load instead of one per
# set. Each set keeps its own metrics.json, so a target path still reruns just that arm and seed.
rule score:
    input:
        generations=expand(f"{R}/{{arm}}/seed{{seed}}/{{s}}/generations.jsonl", s=SETS, allow_missing=True),
        manifest=f"{R}/{{arm}}/seed{{seed}}/evaluate.json",
        detector=f"{R}/lid/romanized_detector.json",
        mia=f"{R}/{{arm}}/seed{{seed}}/mia.jsonl",
        judge=judge_files,
    output:
        metrics=expand(f"{R}/{{arm}}/seed{{seed}}/{{s}}/metrics.json", s=SETS, allow_missing=True),
    log:
        f"{R}/logs/score/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{arm}}/seed{{seed}}.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        failed=failure_token("score"),
        settings=job_settings("score"),
    script:
        "../scripts/score.py"


rule judge:
    # one job per (arm, seed) for every set (one client, one rate limiter), one judge.json per set
    input:
        generations=expand(f"{R}/{{arm}}/seed{{seed}}/{{s}}/generations.jsonl", s=SETS, allow_missing=True),
    output:
        judged=expand(f"{R}/{{arm}}/seed{{seed}}/{{s}}/judge.json", s=SETS, allow_missing=True),
    log:
        f"{R}/logs/judge/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/judge/{{arm}}/seed{{seed}}.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        failed=failure_token("judge"),
        settings=job_settings("judge"),
        cache_dir=config["judge"]["cache_dir"],
    script:
        "../scripts/judge.py"
