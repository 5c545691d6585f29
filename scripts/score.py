from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.failures import outcome  # noqa: E402
from mmie.jobs import cfg_of, evaluate  # noqa: E402

# one failed job is recorded and every other arm goes on (mmie/failures.py)
with outcome(snakemake) as run:
    if run:
        i = snakemake.input
        evaluate.score(cfg_of(snakemake), snakemake.wildcards.arm, int(snakemake.wildcards.seed), i.generations, i.manifest,
                       i.detector, snakemake.output.metrics, i.mia, i.judge or None)
