# mmie: language-unlearning experiments. The stages, in order; logic lives in the mmie/ package.
from snakemake.utils import min_version

min_version("9.0")


# A study config replaces the demo. Snakemake deep-merges every --configfile into a `configfile:` of the
# Snakefile, and a merge cannot delete a key (the demo's arms, data and tuning would leak into every
# study), so config.yaml, the demo, is read only when no --configfile is given. Whatever the given
# files leave out comes from config/schema.yaml's defaults (validated in rules/common.smk).
# `workflow.overwrite_configfiles` (the --configfile list, which Snakemake also passes to every job it
# submits) is no documented API, but Snakemake's public means fall short: --replace-workflow-config
# also drops the demo under a lone --config and is not passed to cluster jobs (their parse would merge
# the demo back in); `configfile:` in profiles/default would override a study named in a user's
# --profile (a workflow profile wins over --profile) and leave `--workflow-profile none` and the
# Python API without any config.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


container: config["container"]


include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/sae.smk"
include: "rules/train.smk"
include: "rules/tune.smk"
include: "rules/evaluate.smk"
include: "rules/robustness.smk"
include: "rules/utility.smk"
include: "rules/report.smk"


# A failed arm or layer job is recorded and the rest goes on (mmie/failures.py); say so loudly at the end.
onsuccess:
    print_failures()


onerror:
    print_failures()


rule all:
    default_target: True
    input:
        final_outputs(),
