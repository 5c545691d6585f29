from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

report.track(cfg_of(snakemake), list(snakemake.input.metrics), list(snakemake.input.checkpoints),
             snakemake.input.decisions, snakemake.input.gates, snakemake.output[0],
             snakemake.params.wandb_dir, snakemake.params.mlflow_store)
