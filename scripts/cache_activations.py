from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.cache_activations(snakemake.config, int(snakemake.wildcards.layer), snakemake.params.model_dir,
                           snakemake.params.data_dir, snakemake.output.acts, snakemake.output.directions,
                           snakemake.output.meta)
