# mmie: language-unlearning experiments. The stages, in order; logic lives in the mmie/ package.
from snakemake.utils import min_version

min_version("9.0")


# A study config replaces the demo: config.yaml, the demo, is the base only when the given configuration
# (--configfile files, --config values) sets none of the keys every study sets (languages, data, arms),
# i.e. without a --configfile or with --config overrides of demo keys (experiment=… renames the run)
# (mmie.config.with_demo, in rules/common.smk). Snakemake's `configfile:` would deep-merge every study
# into the demo, and a merge cannot delete a key (the demo's arms, data and tuning would leak into every
# study). Whatever the given files leave out comes from config/schema.yaml's defaults.


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
