"""Arms (docs/method.md §6). Each method is declared once, in its own module under
``mmie/arms/methods/`` (``mmie.arms.method.Method``); this module builds an arm of any method on a
loaded model. ``active()`` switches the arm on (adapter, hooks) for generation and likelihoods;
outside it the model is the base model — the same weights, never a second copy. ``reference()``
marks a block that needs the base model and fails inside ``active()`` (the rule: ``mmie.arms.state``).
``model`` is what the job runs (a peft wrapper for LoRA)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmie.arms.state import Switch
from mmie.errors import ConfigError


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
    """The arm's settings with its method's defaults filled in."""
    from mmie.arms.methods import method

    defaults = method(spec["method"]).defaults
    return {**defaults, **{k: v for k, v in spec.items() if v is not None}}


def arm_layers(config: Mapping, spec: dict, selected: list[int] | None = None) -> list[int]:
    """Layers of a layer-based arm: its own ``layers``, else the selected layers (layer selection's
    artifact, which holds ``layers.force_layers`` when those are set)."""
    layers = spec.get("layers") or selected or config["layers"]["force_layers"]
    if not layers:
        raise ConfigError(f"arm with method {spec['method']!r} needs layers: run layer selection, set "
                          f"layers.force_layers, or set the arm's own layers")
    return [int(x) for x in layers]


def base_arm(config: Mapping, name: str) -> str | None:
    """The trained arm an edit arm sits on (``on:``), checked; None when it edits the base model."""
    from mmie.arms.methods import method, methods

    spec = config["arms"][name]
    on = spec.get("on")
    if on is None:
        return None
    if not method(spec["method"], f"arms.{name}.method").sits_on:
        raise ConfigError(f"arms.{name}.on is only for {' / '.join(m for m, d in methods().items() if d.sits_on)} arms")
    trained = [m for m, d in methods().items() if d.trains]
    if on not in config["arms"] or config["arms"][on]["method"] not in trained:
        raise ConfigError(f"arms.{name}.on = {on!r} must name a trained arm ({' or '.join(trained)}) of this config")
    return on


def build(name: str, spec: dict, loaded, checkpoint: str | None = None, *, config: Mapping | None = None,
          seed: int = 0, assets=None, files=()) -> Arm:
    """The arm ``name`` on a loaded model, built by its method's declaration. Edit arms need
    ``config``, ``seed`` and ``assets`` (``mmie.arms.edit_arms.LayerAssets``); an edit arm with
    ``on:`` loads that arm's ``checkpoint``; ``files``: the inputs its method declares (``Method.files``)."""
    from mmie.arms.method import BuildContext
    from mmie.arms.methods import method

    declared = method(spec["method"], f"arms.{name}.method")
    if declared.trains and not checkpoint:
        raise ConfigError(f"arm {name} ({declared.name}) needs its checkpoint")
    return declared.build(BuildContext(name=name, spec=resolve_spec(spec), loaded=loaded, checkpoint=checkpoint,
                                       config=config, seed=seed, assets=assets, files=tuple(map(str, files))))


def create_adapter(config: Mapping, spec: dict, model, selected: list[int] | None = None):
    """A fresh, trainable adapter for a trained arm (call after seeding); ``selected``: the layers
    layer selection chose (the default of a method that reads them)."""
    from mmie.arms.methods import method

    spec = resolve_spec(spec)
    declared = method(spec["method"])
    if not declared.trains or declared.create is None:   # a trained method has `create` (Method checks it)
        raise ConfigError(f"method {spec['method']!r} is not trained")
    layers = arm_layers(config, spec, selected) if declared.needs_selection(spec) or spec.get("layers") else None
    return declared.create(spec, model, layers)
