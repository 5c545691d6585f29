from mmie.logs import setup

setup(snakemake.log[0])
from mmie import plots  # noqa: E402

plots.make("training_curves", snakemake.config, {"checkpoints": list(snakemake.input.checkpoints)}, snakemake.output[0])
