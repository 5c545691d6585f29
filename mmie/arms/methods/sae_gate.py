"""``sae_gate``: scales the chosen SAE latents at the selected layers by 1 − alpha (docs/method.md §7);
may sit ``on:`` a trained arm (``lora+sae_gate``)."""

from collections.abc import Mapping

from mmie.arms.edit_arms import build_edit_arm
from mmie.arms.method import LAYERS, Method, Setting


def edit(config: Mapping, spec: dict, model, assets, layer: int, fingerprint: str, seed: int, alpha=None):
    from mmie.arms.edit_arms import gate_edit

    feats = assets.gate(layer, fingerprint, int(model.config.hidden_size))[1]
    return gate_edit(config, spec, model, assets, layer, fingerprint, [int(f["index"]) for f in feats["features"]],
                     alpha=alpha)


#: the settings of a gate arm (also random_gate's: the control takes what the gate takes)
GATE_SETTINGS = (
    Setting("on", {"type": "string"}, "a trained arm of the config (lora, reft) whose checkpoint of the same seed "
            "the gate sits on (e.g. `lora+sae_gate: {method: sae_gate, on: lora}`); no extra training",
            default_doc="none: the gate edits the base model"),
    Setting("gate_alpha", {"type": "number", "minimum": 0}, "`scale` mode: selected latents × (1 − alpha)",
            default_doc="`gate.alpha`"),
    Setting("gate_mode", {"type": "string", "enum": ["scale", "clamp"]}, "`scale` or `clamp`",
            default_doc="`gate.mode`"),
    Setting("gate_clamp", {"type": "number"}, "`clamp` mode: the value active selected latents are set to (negated)",
            default_doc="`gate.clamp`"),
    Setting("layers", LAYERS, "the layers gated", default_doc="the selected layers"),
)

METHOD = Method(
    name="sae_gate", summary="scale the chosen SAE latents at the selected layers", build=build_edit_arm, edit=edit,
    settings=GATE_SETTINGS,
    description="SAE feature gate at the selected layers (the latents chosen by `features`); with `on: lora` it sits "
                "on that arm's checkpoint of the same seed (`lora+sae_gate`, no extra training)",
    needs_selection=lambda spec: True,
    layer_assets=("sae", "features"), sits_on=True, sweep=True, sweep_controls=("random_gate",), imports=("sae_lens",))
