from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

o = snakemake.output
report.aggregate(cfg_of(snakemake), snakemake.input.metrics, o.long, o.summary, o.markdown, o.failures,
                 o.judge_agreement, o.failed_jobs)
