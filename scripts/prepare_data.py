from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, data  # noqa: E402

data.prepare_data(cfg_of(snakemake), snakemake.output.report, list(snakemake.output))
