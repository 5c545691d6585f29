from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import report  # noqa: E402

report.aggregate(snakemake.config, snakemake.input.metrics, snakemake.output.long, snakemake.output.summary,
              snakemake.output.markdown, snakemake.output.failures, snakemake.output.judge_agreement)
