"""``lora``: a peft LoRA adapter trained with an unlearning objective (``train.objective``); the adapter
itself is ``mmie.arms.lora_adapter``."""

from mmie.arms.method import BuildContext, Method


def build(ctx: BuildContext):
    from mmie.arms import Arm
    from mmie.arms.lora_adapter import LoraAdapter

    adapter = LoraAdapter.load(ctx.loaded.model, ctx.checkpoint)
    return Arm(name=ctx.name, method=ctx.spec["method"], model=adapter.model, adapter=adapter,
               details={"checkpoint": str(ctx.checkpoint)})


def create(spec: dict, model, layers):
    from mmie.arms.lora_adapter import LoraAdapter

    return LoraAdapter.create(model, spec)


METHOD = Method(
    name="lora", summary="a LoRA adapter trained with an unlearning objective", build=build, create=create,
    trains=True, keys=("rank", "alpha", "dropout", "targets"),
    defaults={"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    param_markers=("lora_",), imports=("peft",))
