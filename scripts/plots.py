from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import report  # noqa: E402

inputs = dict(snakemake.input.items())
for name, path in snakemake.output.items():
    if name != "pdf":   # the PDF copies are written beside the PNGs (mmie.io.save_figure)
        report.plot(name, snakemake.config, inputs, path)
