"""``base``: the model as loaded; every comparison is against it (docs/method.md §6)."""

from mmie.arms.method import BuildContext, Method


def build(ctx: BuildContext):
    from mmie.arms import Arm

    return Arm(name=ctx.name, method="base", model=ctx.loaded.model)


METHOD = Method(name="base", summary="the model as loaded (the reference of every comparison)", build=build,
                description="the model as loaded; every comparison is against it (a config needs an arm `base` of this method)")
