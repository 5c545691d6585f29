from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.failures import outcome  # noqa: E402
from mmie.jobs import cfg_of, optional_input, train  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])

# no grid point within the retain budget: recorded, the arm's training is blocked, every other arm goes on
with outcome(snakemake) as run:
    if run:
        train.tune(cfg_of(snakemake), snakemake.wildcards.arm, int(snakemake.params.seed), optional_input(snakemake.input, "model"),
                   list(snakemake.input.splits), snakemake.output.record, snakemake.input.get("selection") or None,
                   snakemake.output.chosen)
