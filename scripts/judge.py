from mmie.logs import setup

setup(snakemake.log[0])
from mmie import judge  # noqa: E402

judge.run_all(snakemake.config, list(snakemake.input.generations), snakemake.params.cache_dir,
              list(snakemake.output.judged))
