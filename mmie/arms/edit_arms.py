"""Training-free arms that edit the residual stream at the selected layers (docs/method.md §6–7):
``sae_gate`` (optionally on top of a trained adapter: ``lora+sae_gate``), ``random_gate`` (the same
number of random SAE latents per layer, passing the same filters and matched in forget firing
frequency: the control), ``dim`` (difference-in-means steering) and
``script_scrub`` (LEACE eraser of the target-script vs romanized direction).

``LayerAssets`` finds what a layer's edit needs under the experiment's results folder: the layer
selection, the SAE, its features and the directions; every file is checked against the loaded
model's fingerprint."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from mmie import io
from mmie.arms.state import Switch
from mmie.errors import ConfigError


@dataclass
class LayerAssets:
    root: Path                      # results/<exp>
    selection: Path                 # results/<exp>/layers/selection.json
    _gates: dict = field(default_factory=dict, repr=False)   # (layer, fingerprint) -> (codec, features)

    @classmethod
    def under(cls, root: str | Path) -> "LayerAssets":
        root = Path(root)
        return cls(root=root, selection=root / "layers" / "selection.json")

    def layers(self) -> list[int]:
        if not self.selection.exists():
            raise FileNotFoundError(f"{self.selection} does not exist; run the select_layers rule")
        return [int(x) for x in io.read_json(self.selection)["layers"]]

    def sae_dir(self, layer: int) -> Path:
        return self.root / "sae" / f"layer{layer}"

    def features(self, layer: int) -> Path:
        return self.root / "sae" / "features" / f"layer{layer}.json"

    def directions(self, layer: int) -> Path:
        return self.root / "acts" / f"layer{layer}.directions.safetensors"

    def gate(self, layer: int, fingerprint: str, d_in: int):
        """The layer's checked SAE (as a ``SaeCodec``) and its features file, loaded once per
        instance (the dose-response sweep builds many gates from them)."""
        key = (layer, fingerprint)
        if key not in self._gates:
            from mmie.sae.autoencoder import load_sae
            from mmie.sae.edits import SaeCodec

            sae = load_sae(self.sae_dir(layer), layer=layer, model_fingerprint=fingerprint, d_in=d_in, device="cpu")
            self._gates[key] = (SaeCodec(sae), io.read_json(self.features(layer)))
        return self._gates[key]


def gate_settings(config: dict, spec: dict) -> dict:
    g = config["gate"]
    return {"alpha": spec.get("gate_alpha", g["alpha"]), "mode": spec.get("gate_mode", g["mode"]),
            "clamp": spec.get("gate_clamp", g["clamp"])}


def random_features(feats: dict, seed: int, layer: int) -> tuple[list[int], dict]:
    """The control's latents for one layer: as many as ``feats`` (the layer's features file) chose,
    none of them chosen, passing the same retain/neighbour (``semantic``: and gibberish) filters and
    matched to the chosen latents' forget firing frequency by strata (``mmie.sae.features.matched_random``;
    seeded by ``seed`` and the layer). Also returns the record of the draw (both frequency
    distributions, the strata and any widening)."""
    from mmie.sae.features import matched_random

    if int(feats["layer"]) != layer:
        raise ConfigError(f"random_gate at layer {layer} was given the features of layer {feats['layer']}")
    return matched_random(feats, seed)


def layer_edits(config: dict, spec: dict, model, assets: LayerAssets, seed: int, *, alpha: float | None = None,
                method: str | None = None, fingerprint: str | None = None) -> tuple[dict, dict]:
    """The edit per layer of an edit arm, and what it used (recorded in the manifest).
    ``fingerprint``: the model's, when the caller already has it."""
    from mmie.sae import edits
    from mmie.sae.activations import model_fingerprint

    method = method or spec["method"]
    layers = [int(x) for x in spec.get("layers") or assets.layers()]
    fp = fingerprint or model_fingerprint(model)
    out, details = {}, {"layers": layers, "model_fingerprint": fp}
    for layer in layers:
        if method in ("sae_gate", "random_gate"):
            enc, feats = assets.gate(layer, fp, int(model.config.hidden_size))
            chosen = [int(f["index"]) for f in feats["features"]]
            control = None
            if method == "random_gate":
                chosen, control = random_features(feats, seed, layer)
            g = gate_settings(config, spec)
            if alpha is not None:
                g["alpha"] = alpha
            out[layer] = edits.sae_gate(enc, chosen, **g)
            details[f"layer{layer}"] = {"features": chosen, **g, "feature_method": feats.get("method")}
            if control is not None:
                details[f"layer{layer}"]["control"] = control
        elif method in ("dim", "script_scrub"):
            from mmie.sae.directions import load_directions

            d = load_directions(assets.directions(layer), layer=layer, fingerprint=fp)
            if method == "dim":
                strength = spec.get("strength", 1.0)
                out[layer] = edits.steer(d["dim"], strength)
                details[f"layer{layer}"] = {"strength": strength, "dim_norm": float(d["dim"].norm())}
            else:
                out[layer] = edits.erase(d["scrub.mean"], d["scrub.a"], d["scrub.b"])
                details[f"layer{layer}"] = {"eraser": "LEACE rank 1 (target script vs romanized)"}
        else:
            raise ConfigError(f"method {method!r} is not an edit arm")
    return out, details


class EditAdapter(Switch):
    """Edits as an arm's ``active()`` context, optionally on top of a trained adapter (``inner``:
    switched on and off with the edits; its own ``active()`` cannot be entered again inside).

    ``skip_prefix``: the tokenizer's special prefix. The edits were fitted on activations without
    padding and without that prefix (``mmie.sae.activations``), so they leave those positions
    unchanged (``mmie.model.hooks.edit_layer_outputs``)."""

    def __init__(self, model, edit_fns: dict, inner=None, *, skip_prefix: list[int]) -> None:
        self.model = model
        self.edits = edit_fns
        self.inner = inner
        self.skip_prefix = list(skip_prefix)

    @contextlib.contextmanager
    def _switched_on(self):
        from mmie.model.hooks import edit_layer_outputs

        with contextlib.ExitStack() as stack:
            if self.inner is not None:
                stack.enter_context(self.inner.active())
            stack.enter_context(edit_layer_outputs(self.model, self.edits, skip_prefix=self.skip_prefix))
            yield

    def _as_base(self):
        return self.inner.reference() if self.inner is not None else contextlib.nullcontext()
