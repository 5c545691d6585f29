"""The arm-method registry: one module per method in this folder, each declaring ``METHOD``
(``mmie.arms.method.Method``). A new method is a new module here: nothing else lists the methods."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache

from mmie.arms.method import Method
from mmie.errors import ConfigError


@cache
def methods() -> dict[str, Method]:
    """Every declared method by name, in a stable (alphabetical) order."""
    found: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        declared = getattr(module, "METHOD", None)
        if not isinstance(declared, Method):
            raise TypeError(f"{module.__name__} declares no METHOD = Method(...)")
        if declared.name != info.name:
            raise TypeError(f"{module.__name__} declares method {declared.name!r}; the module must be named after it")
        found[declared.name] = declared
    for declared in found.values():
        for control in declared.sweep_controls:
            if control not in found or found[control].edit is None:
                raise TypeError(f"method {declared.name}: sweep control {control!r} is not a declared edit method")
    return found


def arm_schema() -> dict:
    """The JSON schema of an arm, composed from the declarations: ``method`` one of the registry's, and
    for each method exactly its declared settings (``Method.schema``) besides ``train`` (config/schema.yaml's
    ``$defs/train``, checked there). ``mmie.config.check_arm`` applies it arm by arm."""
    found = methods()
    return {"type": "object", "required": ["method"],
            "properties": {"method": {"type": "string", "enum": list(found)}},
            "allOf": [{"if": {"properties": {"method": {"const": name}}, "required": ["method"]},
                       "then": declared.schema()} for name, declared in found.items()]}


def method(name: str, where: str = "method") -> Method:
    try:
        return methods()[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown method {name!r}; known methods: {', '.join(methods())}") from None


def of(config: Mapping, arm: str) -> Method:
    """The method of a configured arm."""
    return method(config["arms"][arm]["method"], f"arms.{arm}.method")
