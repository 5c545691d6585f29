# Robustness attacks (mmie/attacks, docs/method.md "Removed or hidden?"): one job per (arm, seed) runs
# every attack on one load of the arm (one interpreter start and one model load instead of one per
# attack); base and the oracle are attacked too, as the references. Each attack keeps its own output,
# <arm>/seed<k>/robustness/<attack>.json: asking for one reruns that (arm, seed)'s attack job, and a
# failed attack costs only its own output. At later seeds of a deterministic arm only the seeded attacks
# run (relearning: its fresh adapter and batch order are the seed's), in the attack_seeded job.


rule attack:
    input:
        unpack(edit_inputs),
        model=model_dir,
        checkpoint=checkpoint_dir,
        method_files=method_files,
        forget_set=f"{R}/data/eval_sets/forget.jsonl",
        retain_set=f"{R}/data/eval_sets/retain.jsonl",
        splits=[f"{R}/data/forget/holdout.jsonl", *PROBE_FILES],
        detector=f"{R}/lid/romanized_detector.json",
    output:
        expand(f"{R}/{{arm}}/seed{{seed}}/robustness/{{a}}.json", a=ATTACKS_RUN, allow_missing=True),
    log:
        f"{R}/logs/attack/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/attack/{{arm}}/seed{{seed}}.tsv"
    wildcard_constraints:
        arm=arm_regex(ATTACKED_ARMS),
        seed=arm_regex(map(str, ATTACK_SEEDS)),
    priority: PRIORITY["attack"]
    conda:
        "../envs/mmie.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=gpu_mem,
        gpu=1,
    params:
        failed=failure_token("attack"),
        settings=job_settings("attack"),
        workdir=lambda w: f"{R}/{w.arm}/seed{w.seed}/robustness/.quantize",
    script:
        "../scripts/attack.py"


ruleorder: attack_seeded > attack


use rule attack as attack_seeded with:
    output:
        expand(f"{R}/{{arm}}/seed{{seed}}/robustness/{{a}}.json", a=SEEDED_ATTACKS_RUN, allow_missing=True),
    log:
        f"{R}/logs/attack_seeded/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/attack_seeded/{{arm}}/seed{{seed}}.tsv"
    wildcard_constraints:
        arm=arm_regex(DETERMINISTIC_ATTACKED_ARMS),
        seed=arm_regex(map(str, LATER_ATTACK_SEEDS)),
    params:
        failed=failure_token("attack_seeded"),
        settings=job_settings("attack_seeded"),
        workdir=lambda w: f"{R}/{w.arm}/seed{w.seed}/robustness/.quantize",


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
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("robustness"),
    script:
        "../scripts/robustness.py"
