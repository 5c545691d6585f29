from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, report  # noqa: E402

o = snakemake.output
report.stats(cfg_of(snakemake), list(snakemake.input.metrics), o.intervals, o.headline, o.gates, o.decisions, o.results,
             o.headline_tex, snakemake.input.selection or None, lid_report=snakemake.input.lid,
             tuning=list(snakemake.input.get("tuning") or []), features=list(snakemake.input.features),
             robustness=snakemake.input.robustness or None, utility=list(snakemake.input.utility))
