# The summary jobs read small files and write tables and figures in seconds: on a cluster they run in
# the main Snakemake process instead of queuing a SLURM job each.
localrules:
    aggregate,
    stats,
    plots,
    samples,
    plot_demo_training,
    plot_training_curves,
    robustness,
    export_checkpoints,
    track,


rule aggregate:
    input:
        metrics=all_metrics,
    output:
        long=report(
            f"{R}/summary/metrics_long.csv",
            caption="../report/metrics_long.rst",
            category="Tables",
        ),
        summary=report(
            f"{R}/summary/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        markdown=f"{R}/summary/summary.md",
        failures=report(
            f"{R}/summary/metric_failures.csv",
            caption="../report/failures.rst",
            category="Tables",
        ),
        failed_jobs=report(
            f"{R}/summary/failed_jobs.csv",
            caption="../report/failed_jobs.rst",
            category="Tables",
        ),
        judge_agreement=report(
            f"{R}/summary/judge_agreement.csv",
            caption="../report/judge_agreement.rst",
            category="LLM judge",
        ),
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("aggregate"),
    script:
        "../scripts/aggregate.py"


rule plots:
    input:
        unpack(plot_inputs),
    output:
        **{
            name: report(f"{R}/plots/{name}.png", caption=f"../report/{name}.rst", category=category)
            for name, category in PLOT_RULE_FIGURES.items()
        },
        pdf=expand(f"{R}/plots/{{name}}.pdf", name=list(PLOT_RULE_FIGURES)),
    log:
        f"{R}/logs/plots.log",
    benchmark:
        f"{R}/benchmarks/plots.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("plots"),
    script:
        "../scripts/plots.py"


rule plot_demo_training:
    input:
        model_report=f"{R}/model_report.json",
    output:
        report(
            f"{R}/plots/demo_training.png",
            caption="../report/demo_training.rst",
            category="Demo model",
        ),
        pdf=f"{R}/plots/demo_training.pdf",
    log:
        f"{R}/logs/plot_demo_training.log",
    benchmark:
        f"{R}/benchmarks/plot_demo_training.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("plot_demo_training"),
    script:
        "../scripts/plot_demo_training.py"


rule plot_training_curves:
    input:
        checkpoints=trained_checkpoints,
    output:
        report(
            f"{R}/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Trained arms",
        ),
        pdf=f"{R}/plots/training_curves.pdf",
    log:
        f"{R}/logs/plot_training_curves.log",
    benchmark:
        f"{R}/benchmarks/plot_training_curves.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("plot_training_curves"),
    script:
        "../scripts/plot_training_curves.py"


# Each trained checkpoint as a folder to share (hard links), its model card completed with what the
# study measured of it: decision, headline estimates, the seed's own values.
rule export_checkpoints:
    input:
        checkpoints=trained_checkpoints,
        headline=f"{R}/summary/headline.csv",
        decisions=f"{R}/summary/decisions.json",
        metrics=f"{R}/summary/metrics_long.csv",
    output:
        directory(f"{R}/export"),
    log:
        f"{R}/logs/export_checkpoints.log",
    benchmark:
        f"{R}/benchmarks/export_checkpoints.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("export_checkpoints"),
    script:
        "../scripts/export_checkpoints.py"


rule stats:
    input:
        metrics=all_metrics,
        selection=layer_selection_if_used,
        features=features_if_used,
        lid=f"{R}/lid/lid_report.json",
        tuning=expand(f"{R}/tune/{{arm}}.json", arm=mcfg.tuned_arms(config)),
        robustness=robustness_if_run,
        utility=utility_results,
    output:
        intervals=report(
            f"{R}/summary/intervals.csv",
            caption="../report/intervals.rst",
            category="Tables",
        ),
        headline=report(
            f"{R}/summary/headline.csv",
            caption="../report/headline.rst",
            category="Results",
        ),
        headline_tex=f"{R}/summary/headline.tex",
        gates=report(
            f"{R}/summary/gates.csv",
            caption="../report/gates.rst",
            category="Results",
        ),
        decisions=f"{R}/summary/decisions.json",
        results=report(
            f"{R}/summary/results.md",
            caption="../report/results.rst",
            category="Results",
        ),
    log:
        f"{R}/logs/stats.log",
    benchmark:
        f"{R}/benchmarks/stats.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("stats"),
    script:
        "../scripts/stats.py"


rule samples:
    input:
        generations=sample_generations,
    output:
        report(
            f"{R}/summary/samples.html",
            caption="../report/samples.rst",
            category="Results",
        ),
    log:
        f"{R}/logs/samples.log",
    benchmark:
        f"{R}/benchmarks/samples.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("samples"),
        n=5,
    script:
        "../scripts/samples.py"


# optional run tracking (tracking.backend: wandb or mlflow; docs/running.md "Tracking runs"): one tracked
# run per (arm, seed) from the finished outputs, after the summary; planned only when a backend is set
rule track:
    input:
        metrics=all_metrics,
        checkpoints=trained_checkpoints,
        decisions=f"{R}/summary/decisions.json",
        gates=f"{R}/summary/gates.csv",
    output:
        f"{R}/tracking/tracked.json",
    log:
        f"{R}/logs/track.log",
    benchmark:
        f"{R}/benchmarks/track.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("track"),
        wandb_dir=f"{R}/tracking/wandb",
        mlflow_store=f"{R}/tracking/mlflow",
    script:
        "../scripts/track.py"
