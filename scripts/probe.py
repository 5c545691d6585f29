from mmie.logs import setup

setup(snakemake.log[0])
from mmie.failures import outcome  # noqa: E402
from mmie.jobs import cfg_of, robustness  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])

# a failed attack is recorded and every other job goes on (mmie/failures.py)
with outcome(snakemake) as run:
    if run:
        i = snakemake.input
        robustness.probe(cfg_of(snakemake), snakemake.wildcards.arm, int(snakemake.wildcards.seed),
                         snakemake.params.model_dir, snakemake.params.checkpoint, list(i.splits), snakemake.output[0],
                         assets=dict(i.items()), method_files=list(i.method_files))
