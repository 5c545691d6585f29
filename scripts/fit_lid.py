from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import data  # noqa: E402

data.fit_lid(snakemake.config, str(Path(snakemake.input.report).parent), snakemake.output.detector, snakemake.output.report)
