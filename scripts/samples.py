from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import report  # noqa: E402

report.samples(snakemake.config, list(snakemake.input.generations), snakemake.output[0], snakemake.params.n)
