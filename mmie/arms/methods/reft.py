"""``reft``: pyreft interventions (LoReFT by default) after the selected layers, trained with an
unlearning objective; the adapter itself is ``mmie.arms.reft_adapter``."""

from mmie.arms.method import BuildContext, Method, unless_own_layers
from mmie.errors import ConfigError


def build(ctx: BuildContext):
    from mmie.arms import Arm
    from mmie.arms.reft_adapter import ReftAdapter

    adapter = ReftAdapter.load(ctx.loaded.model, ctx.checkpoint)
    return Arm(name=ctx.name, method="reft", model=ctx.loaded.model, adapter=adapter,
               details={"checkpoint": str(ctx.checkpoint), "layers": adapter.layers})


def create(spec: dict, model, layers):
    from mmie.arms.reft_adapter import ReftAdapter

    return ReftAdapter.create(model, spec, layers)


def check(arm: str, spec: dict, config: dict, workdir) -> None:
    if spec.get("intervention", "loreft") == "loreft" and spec["train"]["weight_decay"] != 0:
        raise ConfigError(f"arms.{arm}.train.weight_decay must be 0 for LoReFT: weight decay collapses its "
                          f"orthogonal rotation to zero after one AdamW step")


METHOD = Method(
    name="reft", summary="ReFT interventions after the selected layers, trained with an unlearning objective",
    build=build, create=create, check=check, trains=True, needs_selection=unless_own_layers,
    keys=("rank", "intervention", "layers", "init"),
    defaults={"rank": 4, "intervention": "loreft", "layers": None, "init": "random"},
    param_markers=("reft",), imports=("pyreft",))
