from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, sae  # noqa: E402

sae.sae_report(cfg_of(snakemake), snakemake.input.selection, list(snakemake.input.quality),
               list(snakemake.input.features), list(snakemake.input.sweeps), dict(snakemake.output.items()))
