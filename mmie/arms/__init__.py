"""Arms (docs/method.md §6) as a registry: method name → builder. An arm is applied to a loaded model for
one job. ``active()`` switches the arm on (adapter, hooks) for generation and likelihoods; outside
it the model is the base model — the same weights, never a second copy. ``reference()`` marks a
block that needs the base model and fails inside ``active()`` (the rule: ``mmie.arms.state``).
``model`` is what the job runs (a peft wrapper for LoRA)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

from mmie.arms.state import Switch
from mmie.errors import ConfigError

TRAINED = ("lora", "reft")
EDITS = ("sae_gate", "random_gate", "dim", "script_scrub")  # training-free, at the selected layers
# Method-specific defaults (the schema cannot express defaults that depend on the method).
DEFAULTS = {
    "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "reft": {"rank": 4, "intervention": "loreft", "layers": None, "init": "random"},
}


@dataclass
class Arm(Switch):
    """An arm of one job; ``active()``/``reference()`` follow ``mmie.arms.state`` (the adapter's own
    state is checked too: its ``active()`` cannot be entered again inside the arm's)."""

    name: str
    method: str
    model: Any
    system: str | None = None          # instruction given to the model (prompt arm)
    adapter: Any = None
    details: dict = field(default_factory=dict)

    def _switched_on(self):
        return self.adapter.active() if self.adapter is not None else contextlib.nullcontext()

    def _as_base(self):
        return self.adapter.reference() if self.adapter is not None else contextlib.nullcontext()


def resolve_spec(spec: dict) -> dict:
    """The arm's settings with the method's defaults filled in."""
    return {**DEFAULTS.get(spec["method"], {}), **{k: v for k, v in spec.items() if v is not None}}


def arm_layers(config: dict, spec: dict, selected: list[int] | None = None) -> list[int]:
    """Layers of a layer-based arm: its own ``layers``, else the selected layers (layer selection's
    artifact, which holds ``layers.force_layers`` when those are set)."""
    layers = spec.get("layers") or selected or config["layers"]["force_layers"]
    if not layers:
        raise ConfigError(f"arm with method {spec['method']!r} needs layers: run layer selection, set "
                          f"layers.force_layers, or set the arm's own layers")
    return [int(x) for x in layers]


def _base(name, spec, loaded, checkpoint):
    return Arm(name=name, method="base", model=loaded.model)


def _prompt(name, spec, loaded, checkpoint):
    return Arm(name=name, method="prompt", model=loaded.model, system=spec["instruction"],
               details={"instruction": spec["instruction"]})


def _lora(name, spec, loaded, checkpoint):
    from mmie.arms.lora import LoraAdapter

    adapter = LoraAdapter.load(loaded.model, checkpoint)
    return Arm(name=name, method="lora", model=adapter.model, adapter=adapter, details={"checkpoint": str(checkpoint)})


def _reft(name, spec, loaded, checkpoint):
    from mmie.arms.reft import ReftAdapter

    adapter = ReftAdapter.load(loaded.model, checkpoint)
    return Arm(name=name, method="reft", model=loaded.model, adapter=adapter,
               details={"checkpoint": str(checkpoint), "layers": adapter.layers})


REGISTRY: dict[str, Callable] = {"base": _base, "prompt": _prompt, "lora": _lora, "reft": _reft}


def _external(name, spec, loaded, checkpoint):
    from mmie.arms import external  # a model unlearned elsewhere: an adapter folder or a whole model

    return external.build(name, spec, loaded, checkpoint)


REGISTRY["external"] = _external


def base_arm(config: dict, name: str) -> str | None:
    """The trained arm an edit arm sits on (``on:``), checked; None when it edits the base model."""
    spec = config["arms"][name]
    on = spec.get("on")
    if on is None:
        return None
    if spec["method"] not in ("sae_gate", "random_gate"):
        raise ConfigError(f"arms.{name}.on is only for sae_gate / random_gate arms")
    if on not in config["arms"] or config["arms"][on]["method"] not in TRAINED:
        raise ConfigError(f"arms.{name}.on = {on!r} must name a trained arm (lora or reft) of this config")
    return on


def build(name: str, spec: dict, loaded, checkpoint: str | None = None, *, config: dict | None = None,
          seed: int = 0, assets=None) -> Arm:
    """The arm ``name`` on a loaded model. Edit arms need ``config``, ``seed`` and ``assets``
    (``mmie.arms.edit_arms.LayerAssets``); an edit arm with ``on:`` loads that arm's ``checkpoint``."""
    method = spec["method"]
    if method in EDITS:
        return _edit_arm(name, spec, loaded, checkpoint, config, seed, assets)
    try:
        builder = REGISTRY[method]
    except KeyError as err:
        raise ConfigError(f"arms.{name}.method {method!r} is not one of {sorted(REGISTRY) + list(EDITS)}") from err
    if method in TRAINED and not checkpoint:
        raise ConfigError(f"arm {name} ({method}) needs its checkpoint")
    return builder(name, resolve_spec(spec), loaded, checkpoint)


def _edit_arm(name, spec, loaded, checkpoint, config, seed, assets) -> Arm:
    from mmie.arms.edit_arms import EditAdapter, layer_edits

    if config is None or assets is None:
        raise ConfigError(f"arm {name} ({spec['method']}) needs the config and the layer assets")
    inner, model, details = None, loaded.model, {}
    on = base_arm(config, name)
    if on is not None:
        if not checkpoint:
            raise ConfigError(f"arm {name} sits on {on} and needs {on}'s checkpoint")
        trained = build(on, config["arms"][on], loaded, checkpoint)
        inner, model = trained.adapter, trained.model
        details = {"on": on, "checkpoint": str(checkpoint)}
    from mmie.model.generation import special_prefix

    fns, used = layer_edits(config, spec, model, assets, seed)
    prefix = special_prefix(loaded.tokenizer)
    return Arm(name=name, method=spec["method"], model=model,
               adapter=EditAdapter(model, fns, inner, skip_prefix=prefix),
               details={**details, **used, "unedited_positions": {"padding": True, "special_prefix": prefix}})


def create_adapter(config: dict, spec: dict, model, selected: list[int] | None = None):
    """A fresh, trainable adapter for a trained arm (call after seeding); ``selected``: the layers
    layer selection chose (ReFT's default)."""
    spec = resolve_spec(spec)
    if spec["method"] == "lora":
        from mmie.arms.lora import LoraAdapter

        return LoraAdapter.create(model, spec)
    if spec["method"] == "reft":
        from mmie.arms.reft import ReftAdapter

        return ReftAdapter.create(model, spec, arm_layers(config, spec, selected))
    raise ConfigError(f"method {spec['method']!r} is not trained")
