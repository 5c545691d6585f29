from mmie.forkserver import delegate

delegate()  # a warm process with torch imported runs this script when one is up (mmie/forkserver.py)
from mmie.logs import setup  # noqa: E402

setup(snakemake.log[0])
from mmie.failures import outcome  # noqa: E402
from mmie.jobs import cfg_of, evaluate, optional_input  # noqa: E402
from mmie.model.loading import setup_job  # noqa: E402

setup_job(snakemake.rule, snakemake.threads, snakemake.resources, snakemake.config, snakemake.config["model"]["device"])

# one failed job is recorded and every other arm goes on (mmie/failures.py)
with outcome(snakemake) as run:
    if run:
        i, o = snakemake.input, snakemake.output
        files = evaluate.EvaluateFiles(
            eval_sets=list(i.eval_sets), generations=list(o.generations), manifest=o.manifest,
            model=optional_input(i, "model"), checkpoint=optional_input(i, "checkpoint"),
            method_files=list(i.method_files), mia=list(i.mia), mia_out=o.mia, fluency=list(i.fluency),
            named=dict(i.items()))
        evaluate.evaluate(cfg_of(snakemake), snakemake.wildcards.arm, int(snakemake.wildcards.seed), files)
