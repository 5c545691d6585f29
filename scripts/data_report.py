from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, data, optional_input  # noqa: E402

i = snakemake.input
data.data_report(cfg_of(snakemake), i.prepare, list(i.splits) + list(i.eval_sets), optional_input(i, "model"),
                 snakemake.output[0])
