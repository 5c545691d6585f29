from mmie.logs import setup

setup(snakemake.log[0])
from mmie import sae_jobs  # noqa: E402

sae_jobs.train_sae(snakemake.config, int(snakemake.wildcards.layer), snakemake.input.acts, snakemake.output[0])
