from mmie.logs import setup

setup(snakemake.log[0])
from mmie import aggregate  # noqa: E402

aggregate.run(snakemake.config, snakemake.input.metrics, snakemake.output.long, snakemake.output.summary,
              snakemake.output.markdown, snakemake.output.failures, snakemake.output.judge_agreement)
