"""Arms (METHOD §6) as a registry: name of a method → builder. An arm is applied to a loaded model
for one job. ``active()`` switches the arm on (adapters, hooks) for generation and likelihoods;
``reference()`` gives the base model's view (adapters and hooks off) for metrics such as the
fluency of outputs under the base model — the same weights, never a second copy."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from mmie.errors import ConfigError


@dataclass
class Arm:
    name: str
    method: str
    system: str | None = None          # instruction given to the model (prompt arm)
    details: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        yield


def _base(name: str, spec: dict, loaded) -> Arm:
    return Arm(name=name, method="base")


def _prompt(name: str, spec: dict, loaded) -> Arm:
    return Arm(name=name, method="prompt", system=spec["instruction"], details={"instruction": spec["instruction"]})


REGISTRY: dict[str, Callable] = {"base": _base, "prompt": _prompt}


def build(name: str, spec: dict, loaded) -> Arm:
    try:
        builder = REGISTRY[spec["method"]]
    except KeyError as err:
        raise ConfigError(f"arms.{name}.method {spec['method']!r} is not one of {sorted(REGISTRY)}") from err
    return builder(name, spec, loaded)
