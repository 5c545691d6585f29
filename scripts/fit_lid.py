from mmie.logs import setup

setup(snakemake.log[0])
from mmie.jobs import cfg_of, data  # noqa: E402

i = snakemake.input
data.fit_lid(cfg_of(snakemake), list(i.splits), i.lid_check, i.report, snakemake.output.detector,
             snakemake.output.report, lid_audit=i.get("lid_audit") or None)
