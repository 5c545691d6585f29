# Robustness attacks (mmie/attacks, docs/method.md "Removed or hidden?"): one job per attack and
# (arm, seed), each loading the arm as its evaluation does; base and the oracle are attacked too, as
# the references. A target path (<arm>/seed<k>/robustness/<attack>.json) reruns one job.


rule relearn:
    input:
        unpack(edit_inputs),
        model=model_dir,
        checkpoint=checkpoint_dir,
        method_files=method_files,
        forget_set=f"{R}/data/eval_sets/forget.jsonl",
        splits=[f"{R}/data/forget/holdout.jsonl"],
        detector=f"{R}/lid/romanized_detector.json",
    output:
        f"{R}/{{arm}}/seed{{seed}}/robustness/relearn.json",
    wildcard_constraints:
        arm=arm_regex(ATTACKED_ARMS),
    log:
        f"{R}/logs/relearn/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/relearn/{{arm}}/seed{{seed}}.tsv"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("relearn"),
        settings=job_settings("relearn"),
        model_dir=model_dir_param,
        checkpoint=checkpoint_param,
    conda:
        "../envs/mmie.yaml"
    script:
        "../scripts/relearn.py"


rule quantize:
    input:
        unpack(edit_inputs),
        model=model_dir,
        checkpoint=checkpoint_dir,
        method_files=method_files,
        forget_set=f"{R}/data/eval_sets/forget.jsonl",
        retain_set=f"{R}/data/eval_sets/retain.jsonl",
        detector=f"{R}/lid/romanized_detector.json",
    output:
        f"{R}/{{arm}}/seed{{seed}}/robustness/quantize.json",
    wildcard_constraints:
        arm=arm_regex(ATTACKED_ARMS),
    log:
        f"{R}/logs/quantize/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/quantize/{{arm}}/seed{{seed}}.tsv"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("quantize"),
        settings=job_settings("quantize"),
        model_dir=model_dir_param,
        checkpoint=checkpoint_param,
        workdir=lambda w: f"{R}/{w.arm}/seed{w.seed}/robustness/.quantize",
    conda:
        "../envs/mmie.yaml"
    script:
        "../scripts/quantize.py"


rule incontext:
    input:
        unpack(edit_inputs),
        model=model_dir,
        checkpoint=checkpoint_dir,
        method_files=method_files,
        forget_set=f"{R}/data/eval_sets/forget.jsonl",
        splits=[f"{R}/data/forget/holdout.jsonl"],
        detector=f"{R}/lid/romanized_detector.json",
    output:
        f"{R}/{{arm}}/seed{{seed}}/robustness/incontext.json",
    wildcard_constraints:
        arm=arm_regex(ATTACKED_ARMS),
    log:
        f"{R}/logs/incontext/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/incontext/{{arm}}/seed{{seed}}.tsv"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("incontext"),
        settings=job_settings("incontext"),
        model_dir=model_dir_param,
        checkpoint=checkpoint_param,
    conda:
        "../envs/mmie.yaml"
    script:
        "../scripts/incontext.py"


rule probe:
    input:
        unpack(edit_inputs),
        model=model_dir,
        checkpoint=checkpoint_dir,
        method_files=method_files,
        splits=PROBE_FILES,
    output:
        f"{R}/{{arm}}/seed{{seed}}/robustness/probe.json",
    wildcard_constraints:
        arm=arm_regex(ATTACKED_ARMS),
    log:
        f"{R}/logs/probe/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/probe/{{arm}}/seed{{seed}}.tsv"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("probe"),
        settings=job_settings("probe"),
        model_dir=model_dir_param,
        checkpoint=checkpoint_param,
    conda:
        "../envs/mmie.yaml"
    script:
        "../scripts/probe.py"


# the study's robustness table, readings and figure: seconds of pandas, run in the main process
rule robustness:
    input:
        attack_results,
    output:
        table=report(
            f"{R}/summary/robustness.csv",
            caption="../report/robustness.rst",
            category="Robustness",
        ),
        readings=f"{R}/summary/robustness_readings.csv",
        figure=report(
            f"{R}/plots/robustness.png",
            caption="../report/robustness_plot.rst",
            category="Robustness",
        ),
    log:
        f"{R}/logs/robustness.log",
    benchmark:
        f"{R}/benchmarks/robustness.tsv"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("robustness"),
    conda:
        "../envs/mmie.yaml"
    script:
        "../scripts/robustness.py"
