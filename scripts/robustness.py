from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, robustness  # noqa: E402

o = snakemake.output
robustness.robustness(cfg_of(snakemake), list(snakemake.input), o.table, o.readings, o.figure)
