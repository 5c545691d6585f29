from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.jobs import cfg_of, data  # noqa: E402

i = snakemake.input
data.fit_lid(cfg_of(snakemake), list(i.splits), i.lid_check, i.report, snakemake.output.detector,
             snakemake.output.report, lid_audit=i.get("lid_audit") or None)
