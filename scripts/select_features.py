from mmie.logs import setup

setup(snakemake.log[0])
from mmie import sae_jobs  # noqa: E402
from mmie.models import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
sae_jobs.select_features(snakemake.config, int(snakemake.wildcards.layer), snakemake.params.model_dir,
                         snakemake.params.data_dir, snakemake.input.acts, snakemake.input.sae,
                         snakemake.output.features, snakemake.output.quality)
