from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.train_adapter(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed),
                       snakemake.params.model_dir, str(Path(snakemake.input.splits[0]).parent.parent),
                       snakemake.output[0], snakemake.input.get("selection") or None)
