from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import sae  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
sae.select_layers(snakemake.config, snakemake.params.model_dir, snakemake.params.data_dir, snakemake.output[0],
                       snakemake.params.judge_cache)
