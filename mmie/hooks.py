"""Hooks on a model's forward pass, always as context managers: whatever happens inside the block
(including an exception), every hook is removed on exit, so nothing leaks into the next arm, set
or job (the old script left gates attached after an error).

Every hook moves its own tensors to the device (and dtype) of the hidden state it touches, so a
model spread over devices with ``device_map`` works."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from mmie.errors import ConfigError

Edit = Callable[[torch.Tensor], torch.Tensor]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks (works through peft wrappers)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers") and (n is None or len(module) == n):
            return module
    raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}")


def check_layers(model, layers: list[int]) -> None:
    n = len(decoder_layers(model))
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ConfigError(f"layers {bad} do not exist: the model has layers 0..{n - 1}")


def _replace_hidden(output, new_hidden: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return new_hidden
    if isinstance(output, tuple):
        return (new_hidden, *output[1:])
    raise TypeError(f"unexpected decoder layer output type {type(output).__name__}")


def _hidden(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def to_hidden(module_or_tensor, hidden: torch.Tensor):
    """Move a module or tensor to the hidden state's device and dtype when it is elsewhere."""
    if isinstance(module_or_tensor, torch.Tensor):
        if module_or_tensor.device != hidden.device or module_or_tensor.dtype != hidden.dtype:
            return module_or_tensor.to(device=hidden.device, dtype=hidden.dtype)
        return module_or_tensor
    p = next(module_or_tensor.parameters(), None)
    if p is not None and p.device != hidden.device:
        module_or_tensor.to(hidden.device)
    return module_or_tensor


@contextlib.contextmanager
def edit_layer_outputs(model, edits: dict[int, Edit]) -> Iterator[None]:
    """Apply ``edits[layer](hidden)`` to the residual stream after each given decoder layer."""
    layers = decoder_layers(model)
    check_layers(model, list(edits))
    handles = []
    try:
        for idx, fn in edits.items():
            def hook(module, args, output, fn=fn):
                return _replace_hidden(output, fn(_hidden(output)))
            handles.append(layers[idx].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_layer_outputs(model, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream after each given decoder layer (the place the edits act on):
    ``store[layer]`` holds the last forward pass's hidden state, detached."""
    store: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> Edit:
        def fn(hidden: torch.Tensor) -> torch.Tensor:
            store[layer] = hidden.detach()
            return hidden
        return fn

    with edit_layer_outputs(model, {layer: recorder(layer) for layer in layers}):
        yield store


def hook_count(model) -> int:
    """Number of forward hooks on the model's modules (a clean model has none from mmie)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
