from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.fit_lid(snakemake.config, snakemake.params.data_dir, snakemake.output.detector, snakemake.output.report)
