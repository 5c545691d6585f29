"""``dim``: difference-in-means steering at the selected layers, away from the target language."""

from collections.abc import Mapping

from mmie.arms.edit_arms import build_edit_arm
from mmie.arms.method import LAYERS, Method, Setting


def edit(config: Mapping, spec: dict, model, assets, layer: int, fingerprint: str, seed: int, alpha=None):
    from mmie.sae import edits
    from mmie.sae.directions import load_directions

    d = load_directions(assets.directions(layer), layer=layer, fingerprint=fingerprint)
    strength = spec.get("strength", 1.0)
    return edits.steer(d["dim"], strength), {"strength": strength, "dim_norm": float(d["dim"].norm())}


METHOD = Method(
    name="dim", summary="difference-in-means steering at the selected layers", build=build_edit_arm, edit=edit,
    settings=(Setting("layers", LAYERS, "the layers steered", default_doc="the selected layers"),
              Setting("strength", {"type": "number", "minimum": 0},
                      "steering strength in units of the difference in means", default=1.0)),
    description="steering: subtract `strength` × (mean forget − mean retain activation) at every position",
    needs_selection=lambda spec: True, layer_assets=("directions",))
