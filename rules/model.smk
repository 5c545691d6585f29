if config["model"]["source"] == "demo":

    rule build_demo_model:
        input:
            splits=TRAIN_FILES + mdata.split_files(f"{R}/data", ["forget", "retain"], ["dev"]),
            detector=f"{R}/lid/romanized_detector.json",
            prepare=f"{R}/data/prepare_report.json",
        output:
            model=directory(f"{R}/model"),
            report=f"{R}/model_report.json",
        log:
            f"{R}/logs/build_demo_model.log",
        benchmark:
            f"{R}/benchmarks/build_demo_model.tsv"
        threads: 2
        resources:
            mem_mb=cpu_mem,
            gpu=1,
        params:
            settings=job_settings("build_demo_model"),
        conda:
            "../envs/mmie.yaml"
        script:
            "../scripts/build_demo_model.py"


if config["model"]["source"] == "gemma3-270m":

    rule convert_gemma:
        output:
            model=directory(f"{R}/model"),
            report=f"{R}/model_report.json",
        log:
            f"{R}/logs/convert_gemma.log",
        benchmark:
            f"{R}/benchmarks/convert_gemma.tsv"
        threads: 2
        resources:
            mem_mb=6000,
        params:
            settings=job_settings("convert_gemma"),
        conda:
            "../envs/mmie.yaml"
        script:
            "../scripts/convert_gemma.py"
