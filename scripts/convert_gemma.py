from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import model  # noqa: E402

model.convert_gemma(snakemake.config, snakemake.output.model, snakemake.output.report)
