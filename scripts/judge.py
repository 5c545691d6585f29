from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, evaluate  # noqa: E402

evaluate.judge(cfg_of(snakemake), list(snakemake.input.generations), snakemake.params.cache_dir,
               list(snakemake.output.judged))
