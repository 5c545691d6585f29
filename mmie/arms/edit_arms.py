"""Training-free arms that edit the residual stream at the selected layers (docs/method.md §6–7):
``sae_gate`` (optionally on top of a trained adapter: ``lora+sae_gate``), ``random_gate`` (the same
number of random SAE latents per layer, passing the same filters and matched in forget firing
frequency: the control), ``dim`` (difference-in-means steering) and
``script_scrub`` (LEACE eraser of the target-script vs romanized direction).

``LayerAssets`` holds what a layer's edit needs, as the rule declares it (rules/common.smk
``layer_asset_inputs``: named inputs ``selection`` and ``<asset><layer>``, e.g. ``sae3``,
``features3``, ``directions3``): the layer selection, the SAE, its features and the directions;
every file is checked against the loaded model's fingerprint."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mmie import io
from mmie.arms.state import Switch
from mmie.errors import ConfigError


@dataclass
class LayerAssets:
    selection: Path                 # the layer-selection artifact (layers/selection.json)
    files: dict = field(default_factory=dict)   # (asset, layer) -> declared path (mmie.arms.method.ASSETS)
    _gates: dict = field(default_factory=dict, repr=False)   # (layer, fingerprint) -> (codec, features)

    @classmethod
    def from_inputs(cls, named: Mapping[str, str]) -> "LayerAssets":
        """From a rule's named inputs: ``selection`` and ``<asset><layer>`` (other names are ignored)."""
        from mmie.arms.method import ASSETS

        if "selection" not in named:
            raise ConfigError(f"the rule declares no 'selection' input among {sorted(named)}; an edit arm's layer "
                              f"assets come from rules/common.smk layer_asset_inputs")
        pattern = re.compile(rf"({'|'.join(ASSETS)})(\d+)")
        files = {}
        for name, path in named.items():
            m = pattern.fullmatch(name)
            if m:
                files[m.group(1), int(m.group(2))] = Path(path)
        return cls(selection=Path(named["selection"]), files=files)

    def layers(self) -> list[int]:
        if not self.selection.exists():
            raise FileNotFoundError(f"{self.selection} does not exist; run the select_layers rule")
        return [int(x) for x in io.read_json(self.selection)["layers"]]

    def path(self, asset: str, layer: int) -> Path:
        if (asset, layer) not in self.files:
            declared = sorted(f"{a}{lay}" for a, lay in self.files)
            raise ConfigError(f"layer {layer}'s {asset} is not among the rule's declared layer assets {declared}; "
                              f"the rule's inputs come from rules/common.smk layer_asset_inputs (method's "
                              f"layer_assets x the arm's layers)")
        return self.files[asset, layer]

    def all_files(self) -> list[Path]:
        """Every declared asset file (an SAE folder's files), for a hash of what an evaluation read."""
        out = [self.selection]
        for p in (self.files[k] for k in sorted(self.files)):
            out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        return out

    def sae_dir(self, layer: int) -> Path:
        return self.path("sae", layer)

    def features(self, layer: int) -> Path:
        return self.path("features", layer)

    def directions(self, layer: int) -> Path:
        return self.path("directions", layer)

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


def gate_settings(config: Mapping, spec: dict) -> dict:
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


def gate_edit(config: Mapping, spec: dict, model, assets: LayerAssets, layer: int, fingerprint: str, chosen: list[int],
              *, alpha: float | None = None) -> tuple:
    """The SAE gate of one layer on the latents ``chosen`` (sae_gate: the features file's; random_gate:
    the matched random draw), and what it used."""
    from mmie.sae import edits

    enc, feats = assets.gate(layer, fingerprint, int(model.config.hidden_size))
    g = gate_settings(config, spec)
    if alpha is not None:
        g["alpha"] = alpha
    return edits.sae_gate(enc, chosen, **g), {"features": chosen, **g, "feature_method": feats.get("method")}


def layer_edits(config: Mapping, spec: dict, model, assets: LayerAssets, seed: int, *, alpha: float | None = None,
                method: str | None = None, fingerprint: str | None = None) -> tuple[dict, dict]:
    """The edit per layer of an edit arm (its method's ``edit``), and what it used (recorded in the
    manifest). ``method``: another edit method on the same layers (the sweep's random control);
    ``fingerprint``: the model's, when the caller already has it."""
    from mmie.arms.fingerprint import model_fingerprint
    from mmie.arms.methods import method as method_of

    declared = method_of(method or spec["method"])
    if declared.edit is None:
        raise ConfigError(f"method {declared.name!r} is not an edit arm")
    layers = [int(x) for x in spec.get("layers") or assets.layers()]
    fp = fingerprint or model_fingerprint(model)
    out, details = {}, {"layers": layers, "model_fingerprint": fp}
    for layer in layers:
        out[layer], details[f"layer{layer}"] = declared.edit(config, spec, model, assets, layer, fp, seed, alpha)
    return out, details


def build_edit_arm(ctx):
    """An edit arm on a loaded model: its edits at its layers, on top of the trained arm it sits on
    (``on:``, whose checkpoint is ``ctx.checkpoint``) or of the base model."""
    from mmie.arms import Arm, base_arm, build
    from mmie.model.generation import special_prefix

    name, spec, config = ctx.name, ctx.spec, ctx.config
    if config is None or ctx.assets is None:
        raise ConfigError(f"arm {name} ({spec['method']}) needs the config and the layer assets")
    inner, model, details = None, ctx.loaded.model, {}
    on = base_arm(config, name)
    if on is not None:
        if not ctx.checkpoint:
            raise ConfigError(f"arm {name} sits on {on} and needs {on}'s checkpoint")
        trained = build(on, config["arms"][on], ctx.loaded, ctx.checkpoint)
        inner, model = trained.adapter, trained.model
        details = {"on": on, "checkpoint": str(ctx.checkpoint)}
    fns, used = layer_edits(config, spec, model, ctx.assets, ctx.seed)
    prefix = special_prefix(ctx.loaded.tokenizer)
    return Arm(name=name, method=spec["method"], model=model, adapter=EditAdapter(model, fns, inner, skip_prefix=prefix),
               details={**details, **used, "unedited_positions": {"padding": True, "special_prefix": prefix}})


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
