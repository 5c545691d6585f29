# Utility through lm-evaluation-harness (mmie/jobs/utility.py, docs/method.md "Utility through lm-eval"):
# optional, off while utility.tasks is []. One job per (arm, seed) loads the arm as its evaluation does and
# runs the configured lm-eval tasks on it with the arm switched on, offline; the table job collects them.


rule utility:
    input:
        unpack(edit_inputs),
        model=model_dir,
        checkpoint=checkpoint_dir,
        method_files=method_files,
        tasks=utility_task_files,
    output:
        f"{R}/{{arm}}/seed{{seed}}/utility.json",
    log:
        f"{R}/logs/utility/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/utility/{{arm}}/seed{{seed}}.tsv"
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("utility"),
        settings=job_settings("utility"),
    script:
        "../scripts/utility.py"


# the study's utility table: seconds of pandas, run in the main process
localrules:
    utility_table,


rule utility_table:
    input:
        utility_results,
    output:
        report(
            f"{R}/summary/utility.csv",
            caption="../report/utility.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/utility_table.log",
    benchmark:
        f"{R}/benchmarks/utility_table.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("utility_table"),
    script:
        "../scripts/utility_table.py"
