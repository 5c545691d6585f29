from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

report.plots(cfg_of(snakemake), dict(snakemake.input.items()), dict(snakemake.output.items()))
