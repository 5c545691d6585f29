from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.prepare_data(snakemake.config, str(Path(snakemake.output.report).parent), snakemake.output.report)
