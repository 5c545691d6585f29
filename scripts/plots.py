from mmie.logs import setup

setup(snakemake.log[0])
from mmie import plots  # noqa: E402

inputs = dict(snakemake.input.items())
for name, path in snakemake.output.items():
    if name != "pdf":   # the PDF copies are written beside the PNGs (mmie.io.save_figure)
        plots.make(name, snakemake.config, inputs, path)
