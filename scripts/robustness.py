from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, robustness  # noqa: E402

o = snakemake.output
robustness.robustness(cfg_of(snakemake), list(snakemake.input), o.table, o.readings, o.figure)
