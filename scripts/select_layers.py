from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, optional_input, sae  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])
sae.select_layers(cfg_of(snakemake), optional_input(snakemake.input, "model"), list(snakemake.input.splits), snakemake.output[0],
                  snakemake.params.judge_cache)
