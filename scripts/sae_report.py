from mmie.logs import setup

setup(snakemake.log[0])
from mmie import sae_report  # noqa: E402

sae_report.run(snakemake.config, snakemake.input.selection, list(snakemake.input.quality),
               list(snakemake.input.features), list(snakemake.input.sweeps), dict(snakemake.output.items()))
