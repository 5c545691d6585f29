from mmie.logs import setup

setup(snakemake.log[0])
from mmie import judge  # noqa: E402

judge.run(snakemake.config, snakemake.input.generations, snakemake.params.cache_dir, snakemake.output[0])
