"""``random_gate``: the control of ``sae_gate``: as many random latents, passing the same filters and
matched in forget firing frequency, drawn from the seed (docs/method.md §7)."""

from collections.abc import Mapping

from mmie.arms.edit_arms import build_edit_arm
from mmie.arms.method import Method
from mmie.arms.methods.sae_gate import GATE_SETTINGS


def edit(config: Mapping, spec: dict, model, assets, layer: int, fingerprint: str, seed: int, alpha=None):
    from mmie.arms.edit_arms import gate_edit, random_features

    feats = assets.gate(layer, fingerprint, int(model.config.hidden_size))[1]
    chosen, control = random_features(feats, seed, layer)
    fn, details = gate_edit(config, spec, model, assets, layer, fingerprint, chosen, alpha=alpha)
    return fn, {**details, "control": control}


METHOD = Method(
    name="random_gate", summary="the SAE gate's control: matched random latents", build=build_edit_arm, edit=edit,
    settings=GATE_SETTINGS,
    description="the control of `sae_gate`: the same gate on as many latents drawn (seeded) from the eligible pool "
                "and matched on forget firing frequency ([docs/method.md §7](../docs/method.md#7-layers-and-saes))",
    needs_selection=lambda spec: True,
    layer_assets=("sae", "features"), sits_on=True, seeded=True, imports=("sae_lens",))
