from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.score(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed), snakemake.input.generations,
               snakemake.input.manifest, snakemake.input.detector, snakemake.output.metrics, snakemake.input.mia,
               snakemake.input.judge or None)
