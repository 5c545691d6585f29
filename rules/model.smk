if config["model"]["source"] == "demo":

    rule build_demo_model:
        input:
            splits=TRAIN_FILES + mdata.split_paths(f"{R}/data", ["forget", "retain"], ["dev"]),
            detector=f"{R}/lid/romanized_detector.json",
            prepare=f"{R}/data/prepare_report.json",
        output:
            model=directory(f"{R}/model"),
            report=f"{R}/model_report.json",
        log:
            f"{R}/logs/build_demo_model.log",
        benchmark:
            f"{R}/benchmarks/build_demo_model.tsv"
        conda:
            "../envs/mmie.yaml"
        threads: 2
        resources:
            mem_mb=cpu_mem,
            gpu=1,
        params:
            settings=job_settings("build_demo_model"),
        script:
            "../scripts/build_demo_model.py"

    # The oracle arm's model (method oracle, mmie/arms/methods/oracle.py): the demo model's recipe and
    # its tokenizer, trained without a single target-language text. Built only when an oracle arm's
    # evaluation asks for it (its method declares the folder: method_files in rules/common.smk).
    rule build_oracle_model:
        input:
            # train and dev (early stopping) parts of retain and the neighbours: no forget or romanized split
            splits=mdata.split_paths(f"{R}/data", ["retain", *NEIGHBOUR_ROLES], ["train", "dev"]),
            # forget dev, read after training only: the reported share of target prompts continued in the target
            target_prompts=str(mdata.split_path(f"{R}/data", "forget", "dev")),
            base_model=f"{R}/model",
            detector=f"{R}/lid/romanized_detector.json",
            prepare=f"{R}/data/prepare_report.json",
        output:
            model=directory(BUILT_MODELS["oracle"]),
            report=f"{R}/oracle_report.json",
        log:
            f"{R}/logs/build_oracle_model.log",
        benchmark:
            f"{R}/benchmarks/build_oracle_model.tsv"
        priority: PRIORITY["build_oracle_model"]
        conda:
            "../envs/mmie.yaml"
        threads: 2
        resources:
            mem_mb=cpu_mem,
            gpu=1,
        params:
            failed=failure_token("build_oracle_model"),
            settings=job_settings("build_oracle_model"),
        script:
            "../scripts/build_oracle_model.py"


if config["model"]["source"] == "gemma3-270m":

    rule convert_gemma:
        output:
            model=directory(f"{R}/model"),
            report=f"{R}/model_report.json",
        log:
            f"{R}/logs/convert_gemma.log",
        benchmark:
            f"{R}/benchmarks/convert_gemma.tsv"
        conda:
            "../envs/mmie.yaml"
        threads: 2
        resources:
            mem_mb=6000,
        params:
            settings=job_settings("convert_gemma"),
        script:
            "../scripts/convert_gemma.py"
