from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

o = snakemake.output
report.aggregate(cfg_of(snakemake), snakemake.input.metrics, o.long, o.summary, o.markdown, o.failures,
                 o.judge_agreement, o.failed_jobs)
