from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import train  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
train.train(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed),
                       snakemake.params.model_dir, str(Path(snakemake.input.splits[0]).parent.parent),
                       snakemake.output[0], snakemake.input.get("selection") or None)
