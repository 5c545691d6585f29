"""``script_scrub``: a rank-1 LEACE eraser of the target-script vs romanized direction at the selected layers."""

from collections.abc import Mapping

from mmie.arms.edit_arms import build_edit_arm
from mmie.arms.method import LAYERS, Method, Setting


def edit(config: Mapping, spec: dict, model, assets, layer: int, fingerprint: str, seed: int, alpha=None):
    from mmie.sae import edits
    from mmie.sae.directions import load_directions

    d = load_directions(assets.directions(layer), layer=layer, fingerprint=fingerprint)
    return edits.erase(d["scrub.mean"], d["scrub.a"], d["scrub.b"]), {"eraser": "LEACE rank 1 (target script vs romanized)"}


METHOD = Method(
    name="script_scrub", summary="LEACE eraser of the script direction at the selected layers",
    build=build_edit_arm, edit=edit,
    settings=(Setting("layers", LAYERS, "the layers erased", default_doc="the selected layers"),),
    description="rank-one LEACE eraser of the target-script vs romanized direction (fitted on forget/train and "
                "its transliteration)",
    needs_selection=lambda spec: True, layer_assets=("directions",))
