from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, model  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

# the demo model trains on the CPU (mmie.model.demo)
setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, runs_on="cpu")
model.build_demo_model(cfg_of(snakemake), list(snakemake.input.splits), snakemake.input.detector,
                       snakemake.output.model, snakemake.output.report)
