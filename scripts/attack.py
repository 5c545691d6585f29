from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.failures import outcome  # noqa: E402
from mmie.jobs import cfg_of, optional_input, robustness  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])

# a failed attack is recorded and costs only its own output; every other job goes on (mmie/failures.py)
with outcome(snakemake) as run:
    if run:
        i, p = snakemake.input, snakemake.params
        args = (snakemake.wildcards.arm, int(snakemake.wildcards.seed), optional_input(i, "model"),
                optional_input(i, "checkpoint"), list(snakemake.output))
        kwargs = dict(forget_set=i.forget_set, retain_set=i.retain_set, splits=list(i.splits), detector=i.detector,
                      workdir=p.workdir, assets=dict(i.items()), method_files=list(i.method_files))
        if snakemake.rule == "attack":
            robustness.attack(cfg_of(snakemake), *args, **kwargs)
        else:   # attack_seeded: the same job where only the seeded attacks run
            robustness.attack_seeded(cfg_of(snakemake), *args, **kwargs)
