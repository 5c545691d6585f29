"""``external``: a model unlearned elsewhere (a peft adapter folder or a whole model), evaluated once
like every other arm; the loading is ``mmie.arms.external_model``."""

from mmie.arms.method import BuildContext, Method


def build(ctx: BuildContext):
    from mmie.arms import external_model as external

    return external.build(ctx.name, ctx.spec, ctx.loaded, ctx.checkpoint)


def check(arm: str, spec: dict, config: dict, workdir) -> None:
    from mmie.arms.external_model import check_spec

    check_spec(arm, spec, workdir)


def files(spec: dict, built: dict) -> list[str]:
    from mmie.arms.external_model import files as external_files

    return external_files(spec)


METHOD = Method(name="external", summary="a model unlearned elsewhere (adapter folder or whole model)",
                build=build, check=check, files=files, keys=("adapter", "model"), imports=("peft",))
