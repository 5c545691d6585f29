from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, data  # noqa: E402

data.prepare_data(cfg_of(snakemake), snakemake.output.report, list(snakemake.output))
