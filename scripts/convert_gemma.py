from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.convert_gemma(snakemake.config, snakemake.output.model, snakemake.output.report)
