from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import sae  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
sae.cache_activations(snakemake.config, int(snakemake.wildcards.layer), snakemake.params.model_dir,
                           snakemake.params.data_dir, snakemake.output.acts, snakemake.output.directions,
                           snakemake.output.meta)
