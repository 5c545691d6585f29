"""``lora``: a peft LoRA adapter trained with an unlearning objective (``train.objective``); the adapter
itself is ``mmie.arms.lora_adapter``."""

from mmie.arms.method import BuildContext, Method, Setting


def build(ctx: BuildContext):
    from mmie.arms import Arm
    from mmie.arms.lora_adapter import LoraAdapter

    adapter = LoraAdapter.load(ctx.loaded.model, ctx.trained_checkpoint())
    return Arm(name=ctx.name, method=ctx.spec["method"], model=adapter.model, adapter=adapter,
               details={"checkpoint": str(ctx.checkpoint)})


def create(spec: dict, model, layers):
    from mmie.arms.lora_adapter import LoraAdapter

    return LoraAdapter.create(model, spec)


METHOD = Method(
    name="lora", summary="a LoRA adapter trained with an unlearning objective", build=build, create=create,
    trains=True,
    settings=(Setting("rank", {"type": "integer", "minimum": 1}, "LoRA rank", default=8),
              Setting("alpha", {"type": "number", "exclusiveMinimum": 0}, "lora_alpha", default=16),
              Setting("dropout", {"type": "number", "minimum": 0, "maximum": 1}, "LoRA dropout", default=0.0),
              Setting("targets", {"type": "array", "items": {"type": "string"}, "minItems": 1},
                      "the modules adapted (checked against the model's architecture before any job runs)",
                      default=["q_proj", "k_proj", "v_proj", "o_proj"])),
    description="peft LoRA trained with the unlearning objective (`train`), one checkpoint per seed",
    param_markers=("lora_",), imports=("peft",))
