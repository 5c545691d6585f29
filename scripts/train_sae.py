from mmie.logs import setup

setup(snakemake.log[0])
from mmie import sae_jobs  # noqa: E402
from mmie.models import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["sae"]["device"])
sae_jobs.train_sae(snakemake.config, int(snakemake.wildcards.layer), snakemake.input.acts, snakemake.output[0])
