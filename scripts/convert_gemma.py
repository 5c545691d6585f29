from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, model  # noqa: E402

model.convert_gemma(cfg_of(snakemake), snakemake.output.model, snakemake.output.report)
