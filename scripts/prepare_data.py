from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.prepare_data(snakemake.config, snakemake.params.data_dir, snakemake.output.report)
