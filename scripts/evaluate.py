from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import evaluate  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
evaluate.evaluate(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed),
                  snakemake.params.model_dir, snakemake.params.sets_dir, snakemake.params.out_root,
                  snakemake.output.manifest, snakemake.params.checkpoint,
                  snakemake.output.mia, snakemake.params.results_root)
