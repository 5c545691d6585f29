rule prepare_data:
    input:
        raw=raw_data,
    output:
        splits=SPLIT_FILES,
        eval_sets=expand(f"{R}/data/eval_sets/{{s}}.jsonl", s=SETS),
        lid_check=f"{R}/data/lid_check.jsonl",
        report=f"{R}/data/prepare_report.json",
    log:
        f"{R}/logs/prepare_data.log",
    benchmark:
        f"{R}/benchmarks/prepare_data.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("prepare_data"),
    script:
        "../scripts/prepare_data.py"


rule fit_lid:
    input:
        splits=FIT_FILES
        + mdata.split_paths(f"{R}/data", ["forget_romanized"], ["train", "dev"])
        + mdata.split_paths(f"{R}/data", NEIGHBOUR_ROLES, ["train"]),
        lid_check=f"{R}/data/lid_check.jsonl",
        report=f"{R}/data/prepare_report.json",
        lid_audit=lid_audit_input,
    output:
        detector=f"{R}/lid/romanized_detector.json",
        report=f"{R}/lid/lid_report.json",
    log:
        f"{R}/logs/fit_lid.log",
    benchmark:
        f"{R}/benchmarks/fit_lid.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("fit_lid"),
    script:
        "../scripts/fit_lid.py"


rule data_report:
    input:
        prepare=f"{R}/data/prepare_report.json",
        splits=SPLIT_FILES,
        eval_sets=eval_set_files,
        model=model_dir,
    output:
        f"{R}/data/data_report.json",
    log:
        f"{R}/logs/data_report.log",
    benchmark:
        f"{R}/benchmarks/data_report.tsv"
    conda:
        "../envs/mmie.yaml"
    resources:
        mem_mb=cpu_mem,
    params:
        settings=job_settings("data_report"),
    script:
        "../scripts/data_report.py"
