from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402
from mmie.models import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
pipeline.sweep_gate(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed),
                    snakemake.params.model_dir, snakemake.params.data_dir, snakemake.input.detector,
                    snakemake.params.results_root, snakemake.output[0])
