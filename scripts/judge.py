from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.failures import outcome  # noqa: E402
from mmie.jobs import cfg_of, evaluate  # noqa: E402

# one failed job is recorded and every other arm goes on (mmie/failures.py)
with outcome(snakemake) as run:
    if run:
        evaluate.judge(cfg_of(snakemake), list(snakemake.input.generations), snakemake.params.cache_dir,
                       list(snakemake.output.judged))
