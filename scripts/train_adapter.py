from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402
from mmie.models import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
pipeline.train_adapter(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed),
                       snakemake.params.model_dir, str(Path(snakemake.input.splits[0]).parent.parent),
                       snakemake.output[0], snakemake.input.get("selection") or None)
