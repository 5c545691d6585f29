from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.score(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed), snakemake.wildcards.set,
               snakemake.input.generations, snakemake.input.manifest, snakemake.input.detector, snakemake.output[0],
               snakemake.input.mia or None, snakemake.input.judge or None)
