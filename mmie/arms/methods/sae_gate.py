"""``sae_gate``: scales the chosen SAE latents at the selected layers by 1 − alpha (docs/method.md §7);
may sit ``on:`` a trained arm (``lora+sae_gate``)."""

from mmie.arms.edit_arms import build_edit_arm
from mmie.arms.method import Method


def edit(config: dict, spec: dict, model, assets, layer: int, fingerprint: str, seed: int, alpha=None):
    from mmie.arms.edit_arms import gate_edit

    feats = assets.gate(layer, fingerprint, int(model.config.hidden_size))[1]
    return gate_edit(config, spec, model, assets, layer, fingerprint, [int(f["index"]) for f in feats["features"]],
                     alpha=alpha)


METHOD = Method(
    name="sae_gate", summary="scale the chosen SAE latents at the selected layers", build=build_edit_arm, edit=edit,
    keys=("layers", "on", "gate_alpha", "gate_mode", "gate_clamp"), needs_selection=lambda spec: True,
    layer_assets=("sae", "features"), sits_on=True, sweep=True, sweep_controls=("random_gate",), imports=("sae_lens",))
