from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import report  # noqa: E402

report.plot("training_curves", snakemake.config, {"checkpoints": list(snakemake.input.checkpoints)}, snakemake.output[0])
