# mmie: language-unlearning experiments. The stages, in order; logic lives in the mmie/ package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


container: config["container"]


include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/sae.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
