from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402
from mmie.models import setup_job  # noqa: E402

# the demo model trains on the CPU (mmie.demo_model)
setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, runs_on="cpu")
pipeline.build_demo_model(snakemake.config, str(Path(snakemake.input.prepare).parent), snakemake.input.detector,
                          snakemake.output.model, snakemake.output.report)
