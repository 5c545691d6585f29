from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

i = snakemake.input
report.export_checkpoints(cfg_of(snakemake), list(i.checkpoints), i.headline, i.decisions, i.metrics, snakemake.output[0])
