from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import report  # noqa: E402

report.plot("demo_training", snakemake.config, dict(snakemake.input.items()), snakemake.output[0])
