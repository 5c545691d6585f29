from pathlib import Path

from mmie.logs import setup

setup(snakemake.log[0])
import torch  # noqa: E402

from mmie import pipeline  # noqa: E402

torch.set_num_threads(snakemake.threads)
pipeline.build_demo_model(snakemake.config, str(Path(snakemake.input.prepare).parent), snakemake.input.detector,
                          snakemake.output.model, snakemake.output.report)
