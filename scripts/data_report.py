from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import data  # noqa: E402

data.data_report(snakemake.config, snakemake.input.prepare, str(Path(snakemake.input.prepare).parent),
                     snakemake.params.model_dir, snakemake.output[0])
