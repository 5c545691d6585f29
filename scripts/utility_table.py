from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, utility  # noqa: E402

utility.utility_table(cfg_of(snakemake), list(snakemake.input), snakemake.output[0])
