from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import model  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

# the demo model trains on the CPU (mmie.model.demo)
setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, runs_on="cpu")
model.build_demo_model(snakemake.config, str(Path(snakemake.input.prepare).parent), snakemake.input.detector,
                          snakemake.output.model, snakemake.output.report)
