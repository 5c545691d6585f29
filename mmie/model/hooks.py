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


def _layers_owner(model) -> torch.nn.Module:
    """The module that holds the decoder layers (``Qwen2Model``…): it receives the ``input_ids`` and
    ``attention_mask`` of every forward pass, whatever wraps it (peft, ``generate``)."""
    layers = decoder_layers(model)
    for module in model.modules():
        if any(child is layers for child in module.children()):
            return module
    raise ConfigError(f"cannot find the module that owns the decoder layers of {type(model).__name__}")


def fitted_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, prefix: list[int],
                     past: int = 0) -> torch.Tensor:
    """``[batch, seq]`` bool: the positions an edit fitted on text tokens acts on — not padding
    (attention mask 0), not the tokenizer's special prefix (BOS: the first ``len(prefix)`` real
    tokens of a row when they are those ids), as the activation cache leaves them out.

    During cached generation ``input_ids`` holds only the new tokens and ``attention_mask`` the
    whole sequence so far: the last ``seq`` columns of the mask belong to the new tokens. Without a
    mask (no padding) the ``past`` cached tokens come first."""
    seq = input_ids.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones((input_ids.shape[0], past + seq), dtype=torch.long, device=input_ids.device)
    if attention_mask.dim() != 2 or attention_mask.shape[0] != input_ids.shape[0] or attention_mask.shape[1] < seq:
        raise ConfigError(f"edits restricted to text tokens need a 2-D attention mask covering the input "
                          f"(input {tuple(input_ids.shape)}, mask {tuple(attention_mask.shape)})")
    mask = attention_mask.to(input_ids.device).long()
    keep = mask[:, -seq:].bool()
    if prefix:
        real = (mask.cumsum(-1) - 1)[:, -seq:]                      # index among the row's real tokens
        ids = torch.tensor(prefix, dtype=input_ids.dtype, device=input_ids.device)
        at = real.clamp(0, len(prefix) - 1)
        keep &= ~((real < len(prefix)) & (input_ids == ids[at]))
    return keep


@contextlib.contextmanager
def edit_layer_outputs(model, edits: dict[int, Edit], *, skip_prefix: list[int] | None = None) -> Iterator[None]:
    """Apply ``edits[layer](hidden)`` to the residual stream after each given decoder layer.

    ``skip_prefix=None``: every position is edited (ReFT, trained at every position; recording;
    layer selection's ablation). A list (the tokenizer's special prefix, maybe empty): the edits act
    only where they were fitted — padding and the special prefix keep their hidden state bit for
    bit (``fitted_positions``); the positions come from the model call's ``input_ids`` and
    ``attention_mask``."""
    layers = decoder_layers(model)
    check_layers(model, list(edits))
    handles = []
    current: dict[str, torch.Tensor] = {}
    try:
        if skip_prefix is not None:
            prefix = [int(x) for x in skip_prefix]

            def capture(module, args, kwargs):
                ids = kwargs.get("input_ids", args[0] if args else None)
                if ids is None:
                    raise ConfigError("edits restricted to text tokens need input_ids (not inputs_embeds) in the "
                                      "model call")
                mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
                past = int(cache.get_seq_length()) if mask is None and cache is not None else 0
                current["keep"] = fitted_positions(ids, mask, prefix, past)

            handles.append(_layers_owner(model).register_forward_pre_hook(capture, with_kwargs=True))
        for idx, fn in edits.items():
            def hook(module, args, output, fn=fn, idx=idx):
                hidden = _hidden(output)
                new = fn(hidden)
                if skip_prefix is not None:
                    keep = current.get("keep")
                    if keep is None:
                        raise ConfigError(f"layer {idx}: no position mask (the decoder layer ran outside a model "
                                          f"call); call the model, not its layers, under these edits")
                    if keep.shape != hidden.shape[:2]:
                        raise ConfigError(f"layer {idx}: position mask {tuple(keep.shape)} does not match the "
                                          f"hidden state {tuple(hidden.shape)}")
                    new = torch.where(keep.to(hidden.device).unsqueeze(-1), new, hidden)
                return _replace_hidden(output, new)
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
