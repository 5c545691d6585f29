"""``prompt``: an instruction given to the model (system message, or a prefix without a chat template)."""

from collections.abc import Mapping

from mmie.arms.method import BuildContext, Method, Setting
from mmie.errors import ConfigError


def build(ctx: BuildContext):
    from mmie.arms import Arm

    return Arm(name=ctx.name, method="prompt", model=ctx.loaded.model, system=ctx.spec["instruction"],
               details={"instruction": ctx.spec["instruction"]})


def check(arm: str, spec: dict, config: Mapping, workdir) -> None:
    if not spec.get("instruction"):
        raise ConfigError(f"arms.{arm}: method 'prompt' needs an 'instruction'")


METHOD = Method(
    name="prompt", summary="an instruction to answer in the retain language", build=build, check=check,
    settings=(Setting("instruction", {"type": "string"}, "the instruction given as system message (or as a "
                      "plain-text prefix line when the tokenizer has no chat template)", default_doc="required"),),
    description="an instruction to answer in the retain language; the weights are untouched")
