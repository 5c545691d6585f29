"""The summary jobs are local rules (a SLURM run does not queue a job for each): Snakemake's own
parse of the workflow says so, and the model jobs are not."""
import subprocess

from conftest import ROOT, SNAKEMAKE

CODE = """
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"))
    print(" ".join(sorted(wf._workflow._localrules)))
"""


def test_summary_rules_are_local():
    res = subprocess.run([SNAKEMAKE[0], "-c", CODE], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    local = set(res.stdout.split())
    assert {"aggregate", "stats", "plots", "samples"} <= local, local
    assert not local & {"evaluate", "train", "score", "train_sae"}
