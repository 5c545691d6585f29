"""``oracle``: the model that never learned the target language, the known answer every gate must pass
(and the reference of membership inference). Untrained here and seedless, evaluated once like an
``external`` arm with a whole model (loaded next to the base model, which stays the reference of the
base-relative metrics such as token KL; the loading is ``mmie.arms.external_model``).

- ``model.source: demo`` and no settings: the workflow builds it (rules/model.smk ``build_oracle_model``:
  the demo model's recipe and tokenizer, no target-language text) and this arm evaluates that folder;
- any other model source: mmie cannot build an oracle of a pretrained model; the config declares one
  like an external arm, ``model: {source: local|hub, ...}`` (a model trained without the target
  language, sharing the base model's tokenizer) or ``adapter: <folder>``.

At most one arm of a config is an oracle (``mmie.config.oracle_arm``)."""

from collections.abc import Mapping

from mmie.arms.method import BuildContext, Method
from mmie.arms.methods.external import MODEL_SETTINGS

BUILT = "oracle"   # the name of the model the workflow builds for it (rules/common.smk BUILT_MODELS)


def declared(spec: dict) -> bool:
    """Whether the config names the oracle's model (or adapter) itself."""
    return spec.get("adapter") is not None or spec.get("model") is not None


def build(ctx: BuildContext):
    from mmie.arms import external_model as external
    from mmie.errors import ConfigError

    if declared(ctx.spec):
        arm = external.build(ctx.name, ctx.spec, ctx.loaded, ctx.checkpoint, method="oracle")
        arm.details["oracle"] = "declared in the config"
        return arm
    if len(ctx.files) != 1:
        raise ConfigError(f"arms.{ctx.name}: the oracle arm's evaluation needs the built oracle model as its one "
                          f"declared file (rules/common.smk method_files), got {list(ctx.files)}")
    spec = {**ctx.spec, "model": {"source": "local", "path": ctx.files[0]}}
    arm = external.build(ctx.name, spec, ctx.loaded, ctx.checkpoint, method="oracle")
    arm.details["oracle"] = "built by build_oracle_model"
    return arm


def check(arm: str, spec: dict, config: Mapping, workdir) -> None:
    from mmie.arms.external_model import check_spec
    from mmie.errors import ConfigError

    if declared(spec):
        check_spec(arm, spec, workdir, method="oracle")
        return
    source = config["model"]["source"]
    if source != "demo":
        raise ConfigError(
            f"arms.{arm}: an oracle of a pretrained model (model.source {source!r}) cannot be built by mmie; declare "
            f"a model trained without the target language: {{method: oracle, model: {{source: local|hub, ...}}}} "
            f"(it must share the base model's tokenizer) or {{method: oracle, adapter: <folder>}}. Only the demo "
            f"model (model.source: demo) has an oracle the workflow builds")


def files(spec: dict, built: dict) -> list[str]:
    from mmie.arms.external_model import files as external_files

    if declared(spec):
        return external_files(spec)
    return [built[BUILT]] if BUILT in built else []


METHOD = Method(name="oracle", summary="the model that never learned the target language (built for the demo, "
                                       "declared otherwise)",
                build=build, check=check, files=files, settings=MODEL_SETTINGS, imports=("peft",),
                description="the model that never learned the target language: the known answer every gate must "
                            "pass and the reference of `mia_vs_oracle`; seedless; at most one per study. Demo model: "
                            "no settings (the workflow builds it); any other model: `adapter` or `model` as for "
                            "`external` (a model trained without the target language, sharing the tokenizer) "
                            "([docs/method.md §6](../docs/method.md#6-arms))")
