"""``reft``: pyreft interventions (LoReFT by default) after the selected layers, trained with an
unlearning objective; the adapter itself is ``mmie.arms.reft_adapter``."""

from collections.abc import Mapping

from mmie.arms.method import LAYERS, BuildContext, Method, Setting, unless_own_layers
from mmie.errors import ConfigError


def build(ctx: BuildContext):
    from mmie.arms import Arm
    from mmie.arms.reft_adapter import ReftAdapter

    adapter = ReftAdapter.load(ctx.loaded.model, ctx.trained_checkpoint())
    return Arm(name=ctx.name, method="reft", model=ctx.loaded.model, adapter=adapter,
               details={"checkpoint": str(ctx.checkpoint), "layers": adapter.layers})


def create(spec: dict, model, layers):
    from mmie.arms.reft_adapter import ReftAdapter

    return ReftAdapter.create(model, spec, layers)


def check(arm: str, spec: dict, config: Mapping, workdir) -> None:
    if spec.get("intervention", "loreft") == "loreft" and spec["train"]["weight_decay"] != 0:
        raise ConfigError(f"arms.{arm}.train.weight_decay must be 0 for LoReFT: weight decay collapses its "
                          f"orthogonal rotation to zero after one AdamW step")


METHOD = Method(
    name="reft", summary="ReFT interventions after the selected layers, trained with an unlearning objective",
    build=build, create=create, check=check, trains=True, needs_selection=unless_own_layers,
    settings=(Setting("rank", {"type": "integer", "minimum": 1}, "the intervention's rank", default=4),
              Setting("intervention", {"type": "string", "enum": ["loreft", "noreft"]}, "the pyreft intervention",
                      default="loreft"),
              Setting("layers", LAYERS, "the layers intervened after", default=None, default_doc="the selected layers"),
              Setting("init", {"type": "string", "enum": ["random", "identity"]},
                      "pyreft's random start, or the identity", default="random")),
    description="pyreft intervention on the residual stream after each layer, at every position, trained with the "
                "unlearning objective (`train`; LoReFT needs `train.weight_decay: 0`)",
    param_markers=("reft",), imports=("pyreft",))
