from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import evaluate  # noqa: E402

evaluate.judge(snakemake.config, list(snakemake.input.generations), snakemake.params.cache_dir,
              list(snakemake.output.judged))
