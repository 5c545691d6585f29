from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.failures import outcome  # noqa: E402
from mmie.jobs import cfg_of, model  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

# trained on the CPU like the demo model it is the oracle of (mmie.model.demo)
setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, runs_on="cpu")

# one failed job is recorded and every other arm goes on (mmie/failures.py)
with outcome(snakemake) as run:
    if run:
        i = snakemake.input
        model.build_oracle_model(cfg_of(snakemake), list(i.splits), i.target_prompts, i.base_model, i.detector,
                                 snakemake.output.model, snakemake.output.report)
