"""LoRA arm (docs/method.md §6) with peft: trained with an unlearning objective, saved with peft's own API,
loaded with ``PeftModel.from_pretrained`` and verified key by key and value by value (the old
script saved adapters that then loaded nothing).

peft enables an adapter's layers when it creates or loads it; mmie disables them at once, so
outside ``active()`` the model is the base model like for every arm (``mmie.arms.state``).
peft's enable/disable also flips the adapter weights' ``requires_grad``; mmie keeps the flags the
adapter was created with (trainable after ``create``, frozen after ``load``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from mmie.arms.state import ArmStateError, Switch, copy_tensors_in_place
from mmie.errors import ModelError

WEIGHTS = "adapter_model.safetensors"


class LoraAdapter(Switch):
    method = "lora"
    # set by a method that fixes its layers (rmu: its layer and the layers it updates); absent otherwise
    layers: list[int]
    updated_layers: list[int]

    def __init__(self, peft_model) -> None:
        self.model = peft_model
        self._set_enabled(False)

    @classmethod
    def create(cls, model, spec: dict) -> "LoraAdapter":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                         target_modules=list(spec["targets"]), bias="none", task_type="CAUSAL_LM")
        return cls(get_peft_model(model, cfg))

    def parameters(self):
        return [p for n, p in self.model.named_parameters() if "lora_" in n]

    def _tuner_layers(self) -> list:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        if not layers:
            raise ModelError("the LoRA model has no adapter layers (peft injected nothing)")
        return layers

    def enabled(self) -> bool:
        """Whether the adapter layers act (True only inside ``active()``)."""
        states = {not m.disable_adapters for m in self._tuner_layers()}
        if len(states) != 1:
            raise ArmStateError("some LoRA layers are enabled and others disabled; something outside mmie "
                                "switched them (peft's enable/disable_adapter_layers)")
        return states.pop()

    def _set_enabled(self, on: bool) -> None:
        flags = [(p, p.requires_grad) for p in self.parameters()]
        if on:
            self.model.base_model.enable_adapter_layers()
        else:
            self.model.base_model.disable_adapter_layers()
        for p, flag in flags:
            p.requires_grad_(flag)

    @contextlib.contextmanager
    def _switched_on(self) -> Iterator[None]:
        if self.enabled():
            raise ArmStateError("the LoRA adapter is already enabled outside active(); something outside mmie "
                                "switched it on (peft's enable_adapter_layers)")
        self._set_enabled(True)
        try:
            yield
        finally:
            self._set_enabled(False)

    @contextlib.contextmanager
    def _as_base(self) -> Iterator[None]:
        if self.enabled():
            raise ArmStateError("reference(): the LoRA adapter is enabled outside active(); the model is not the "
                                "base model (something outside mmie switched it on)")
        yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(self.model, state)
        # peft annotates the result as `namedtuple`; it is torch's load_state_dict result
        unexpected = res.unexpected_keys  # type: ignore[attr-defined]
        if unexpected:
            raise ModelError(f"LoRA state has unexpected keys: {sorted(unexpected)[:5]}")

    def _live_tensors(self) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        return {k: v for k, v in named.items() if "lora_" in k}

    def resume_state(self) -> dict[str, torch.Tensor]:
        """Every LoRA tensor under torch's own names (parameters and buffers), for resuming training."""
        return {k: v.detach().cpu().clone() for k, v in self._live_tensors().items()}

    def load_resume_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``resume_state()`` in place (the optimizer keeps pointing at the same tensors)."""
        copy_tensors_in_place(self._live_tensors(), state, "LoRA")

    def save(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(str(out_dir))
        if not (Path(out_dir) / WEIGHTS).is_file():
            raise ModelError(f"peft did not write {WEIGHTS} into {out_dir}")

    @classmethod
    def load(cls, model, ckpt_dir: str | Path) -> "LoraAdapter":
        """Load strictly: every saved tensor must land in the model, and every adapter tensor of the
        model must come from the file, with identical values."""
        from peft import PeftModel, get_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(ckpt_dir)
        if not (path / WEIGHTS).is_file():
            raise ModelError(f"no LoRA weights in {path} (expected {WEIGHTS}); rerun its train rule")
        saved = load_file(str(path / WEIGHTS))
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        loaded = get_peft_model_state_dict(peft_model)
        missing = sorted(set(saved) - set(loaded))
        unexpected = sorted(set(loaded) - set(saved))
        if missing or unexpected:
            raise ModelError(f"LoRA checkpoint {path} does not match the model: keys in the file but not the "
                             f"model {missing[:5]}, keys of the model not in the file {unexpected[:5]}")
        for k, v in saved.items():
            if not torch.equal(loaded[k].detach().cpu(), v.cpu()):
                raise ModelError(f"LoRA checkpoint {path}: tensor {k} did not load (values differ)")
        peft_model.eval()
        return cls(peft_model)
