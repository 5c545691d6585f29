"""``external``: a model unlearned elsewhere (a peft adapter folder or a whole model), evaluated once
like every other arm; the loading is ``mmie.arms.external_model``."""

from collections.abc import Mapping

from mmie.arms.method import BuildContext, Method, Setting


def build(ctx: BuildContext):
    from mmie.arms import external_model as external

    return external.build(ctx.name, ctx.spec, ctx.loaded, ctx.checkpoint)


def check(arm: str, spec: dict, config: Mapping, workdir) -> None:
    from mmie.arms.external_model import check_spec

    check_spec(arm, spec, workdir)


def files(spec: dict, built: dict) -> list[str]:
    from mmie.arms.external_model import files as external_files

    return external_files(spec)


#: where the model of an external (or a declared oracle) arm comes from: exactly one of the two
MODEL_SETTINGS = (
    Setting("adapter", {"oneOf": [{"type": "string"},
                                  {"type": "object", "additionalProperties": False,
                                   "required": ["source", "id", "revision"],
                                   "properties": {"source": {"const": "hub"}, "id": {"type": "string"},
                                                  "revision": {"type": "string"}}}]},
            "a peft adapter (save_pretrained) for the configured base model: a folder, or `{source: hub, id, "
            "revision}` read from the local Hugging Face cache at that (required) revision, fetched beforehand"),
    Setting("model", {"type": "object", "additionalProperties": False, "required": ["source"],
                      "properties": {"source": {"type": "string", "enum": ["hub", "local"]},
                                     "id": {"type": "string"}, "revision": {"type": "string"},
                                     "path": {"type": "string"}}},
            "a whole model: `{source: hub, id, revision}` with a pinned revision (commit hash), or "
            "`{source: local, path}` (a Hugging Face model folder); it must share the base model's tokenizer"),
)

METHOD = Method(
    name="external", summary="a model unlearned elsewhere (adapter folder or whole model)",
    build=build, check=check, files=files, settings=MODEL_SETTINGS, imports=("peft",),
    description="a model or adapter unlearned elsewhere, evaluated once (seedless) like any other arm; exactly one of "
                "`adapter` and `model` ([docs/method.md §6](../docs/method.md#6-arms))")
