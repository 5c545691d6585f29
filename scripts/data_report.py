from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, data  # noqa: E402

i = snakemake.input
data.data_report(cfg_of(snakemake), i.prepare, list(i.splits) + list(i.eval_sets), snakemake.params.model_dir,
                 snakemake.output[0])
