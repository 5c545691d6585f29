"""Arms (METHOD §6) as a registry: method name → builder. An arm is applied to a loaded model for
one job. ``active()`` switches the arm on (adapter, hooks) for generation and likelihoods;
``reference()`` gives the base model's view (adapter and hooks off) — the same weights, never a
second copy of the model. ``model`` is what the job runs (a peft wrapper for LoRA)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

from mmie.errors import ConfigError

TRAINED = ("lora", "reft")
# Method-specific defaults (the schema cannot express defaults that depend on the method).
DEFAULTS = {
    "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "reft": {"rank": 4, "intervention": "loreft", "layers": None, "init": "random"},
}


@dataclass
class Arm:
    name: str
    method: str
    model: Any
    system: str | None = None          # instruction given to the model (prompt arm)
    adapter: Any = None
    details: dict = field(default_factory=dict)

    def active(self):
        return self.adapter.active() if self.adapter is not None else contextlib.nullcontext()

    def reference(self):
        return self.adapter.reference() if self.adapter is not None else contextlib.nullcontext()


def resolve_spec(spec: dict) -> dict:
    """The arm's settings with the method's defaults filled in."""
    return {**DEFAULTS.get(spec["method"], {}), **{k: v for k, v in spec.items() if v is not None}}


def arm_layers(config: dict, spec: dict) -> list[int]:
    """Layers of a layer-based arm: its own ``layers``, else ``layers.force_layers``."""
    layers = spec.get("layers") or config["layers"]["force_layers"]
    if not layers:
        raise ConfigError(f"arm with method {spec['method']!r} needs layers: set layers.force_layers "
                          f"(or the arm's own layers)")
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


def build(name: str, spec: dict, loaded, checkpoint: str | None = None) -> Arm:
    try:
        builder = REGISTRY[spec["method"]]
    except KeyError as err:
        raise ConfigError(f"arms.{name}.method {spec['method']!r} is not one of {sorted(REGISTRY)}") from err
    if spec["method"] in TRAINED and not checkpoint:
        raise ConfigError(f"arm {name} ({spec['method']}) needs its checkpoint")
    return builder(name, resolve_spec(spec), loaded, checkpoint)


def create_adapter(config: dict, spec: dict, model):
    """A fresh, trainable adapter for a trained arm (call after seeding)."""
    spec = resolve_spec(spec)
    if spec["method"] == "lora":
        from mmie.arms.lora import LoraAdapter

        return LoraAdapter.create(model, spec)
    if spec["method"] == "reft":
        from mmie.arms.reft import ReftAdapter

        return ReftAdapter.create(model, spec, arm_layers(config, spec))
    raise ConfigError(f"method {spec['method']!r} is not trained")
