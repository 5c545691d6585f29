from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import data  # noqa: E402

data.prepare_data(snakemake.config, str(Path(snakemake.output.report).parent), snakemake.output.report)
