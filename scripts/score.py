from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import evaluate  # noqa: E402

evaluate.score(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed), snakemake.input.generations,
               snakemake.input.manifest, snakemake.input.detector, snakemake.output.metrics, snakemake.input.mia,
               snakemake.input.judge or None)
