from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

report.samples(cfg_of(snakemake), list(snakemake.input.generations), snakemake.output[0], snakemake.params.n)
