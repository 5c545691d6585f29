from mmie.logs import setup

setup(snakemake.log[0])
from mmie import pipeline  # noqa: E402

pipeline.sweep_gate(snakemake.config, snakemake.wildcards.arm, int(snakemake.wildcards.seed),
                    snakemake.params.model_dir, snakemake.params.data_dir, snakemake.input.detector,
                    snakemake.params.results_root, snakemake.output[0])
