from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

report.plot_demo_training(cfg_of(snakemake), snakemake.input.model_report, snakemake.output[0])
