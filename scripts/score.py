from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, evaluate  # noqa: E402

i = snakemake.input
evaluate.score(cfg_of(snakemake), snakemake.wildcards.arm, int(snakemake.wildcards.seed), i.generations, i.manifest,
               i.detector, snakemake.output.metrics, i.mia, i.judge or None)
