"""The one on/off rule every arm follows (the ``Arm`` wrapper, LoRA, ReFT, edits, edits on an adapter).

- Outside ``active()`` the model IS the base model: no mmie hook is attached and a LoRA adapter's
  layers are disabled (peft enables them when it creates or loads an adapter; mmie switches them
  off at once).
- ``active()`` switches the arm on for the block, exactly once: entering it while the arm is
  already active (or inside ``reference()``) raises ``ArmStateError``; the arm would otherwise be
  applied twice, or its "base" pass would still run with the arm on.
- ``reference()`` marks a block that needs the base model. It switches nothing on or off (outside
  ``active()`` the model already is the base model); it checks that, and raises inside
  ``active()``. So a base quantity (the token KL's reference pass, the fluency of outputs under the
  base model) is computed outside the arm's ``active()`` block — or it fails loudly."""

from __future__ import annotations

import contextlib
from typing import Iterator

from mmie.errors import MMIEError, ModelError


class ArmStateError(MMIEError):
    """An arm's ``active()``/``reference()`` was entered in a state where it cannot mean what it says."""


class Switch:
    """Base of every arm type: subclasses implement ``_switched_on()`` (a context manager that
    attaches the arm and detaches it on exit) and may check the base state in ``_as_base()``."""

    _state = "off"           # off | active | reference

    def _label(self) -> str:
        name = getattr(self, "name", None)
        return f"arm {name!r}" if name else type(self).__name__

    def _enter(self, what: str) -> None:
        if self._state != "off":
            raise ArmStateError(
                f"{self._label()}: {what}() entered inside {self._state}(); arm contexts do not nest. Outside "
                f"active() the model is the base model: compute base quantities (reference passes) outside the "
                f"'with arm.active():' block, and switch the arm on once per block.")
        self._state = what

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._enter("active")
        try:
            with self._switched_on():
                yield
        finally:
            self._state = "off"

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        self._enter("reference")
        try:
            with self._as_base():
                yield
        finally:
            self._state = "off"

    @property
    def is_active(self) -> bool:
        return self._state == "active"

    def _switched_on(self):
        return contextlib.nullcontext()

    def _as_base(self):
        """Check that the model is the base model now (nothing to switch: outside ``active()`` it is)."""
        return contextlib.nullcontext()


def copy_tensors_in_place(named: dict, state: dict, what: str) -> None:
    """Copy ``state`` into the live tensors ``named`` (same objects afterwards, so an optimizer built
    on them stays valid); the key sets must match exactly."""
    missing, unexpected = sorted(set(named) - set(state)), sorted(set(state) - set(named))
    if missing or unexpected:
        raise ModelError(f"{what} resume state does not match the adapter: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; delete the resume folder to start from scratch")
    import torch

    with torch.no_grad():
        for k, t in named.items():
            if t.shape != state[k].shape:
                raise ModelError(f"{what} resume state: tensor {k} has shape {tuple(state[k].shape)}, "
                                 f"the adapter {tuple(t.shape)}")
            t.copy_(state[k].to(t.device, t.dtype))
