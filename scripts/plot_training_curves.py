from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

report.plot_training_curves(cfg_of(snakemake), list(snakemake.input.checkpoints), snakemake.output[0])
