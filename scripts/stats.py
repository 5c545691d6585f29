from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import report  # noqa: E402

o = snakemake.output
report.stats(snakemake.config, list(snakemake.input.metrics), o.intervals, o.headline, o.gates, o.decisions, o.results,
               o.headline_tex,
               snakemake.input.selection or None)
