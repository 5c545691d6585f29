from mmie.logs import setup

setup(snakemake.log[0])
from mmie import plots  # noqa: E402

plots.make("demo_training", snakemake.config, dict(snakemake.input.items()), snakemake.output[0])
