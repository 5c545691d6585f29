from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.samples(snakemake.config, list(snakemake.input.generations), snakemake.output[0], snakemake.params.n)
