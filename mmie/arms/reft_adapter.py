"""ReFT arm (docs/method.md §6): pyreft interventions (LoReFT by default) on the residual stream after the
selected layers, applied at every position through mmie's own hook context manager, so batched
generation and likelihoods work exactly as for every other arm. Saved as safetensors plus a config,
loaded strictly.

pyreft's LoReFT rotation is an orthogonal parametrization: AdamW weight decay turns it into a zero
matrix after one step (the intervention then does nothing), so ``weight_decay`` must be 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmie.arms.state import Switch, copy_tensors_in_place
from mmie.errors import ConfigError, ModelError
from mmie.model.hooks import check_layers, edit_layer_outputs, to_hidden

WEIGHTS = "reft_weights.safetensors"
CONFIG = "reft_config.json"


def intervention_class(kind: str):
    import pyreft

    classes = {"loreft": pyreft.LoreftIntervention, "noreft": pyreft.NoreftIntervention}
    if kind not in classes:
        raise ConfigError(f"ReFT intervention {kind!r} is not one of {sorted(classes)}")
    return classes[kind]


class ReftAdapter(Switch):
    """Outside ``active()`` no hook is attached: the model is the base model (``mmie.arms.state``).
    The interventions act at every position, the special prefix included: that is how they are
    trained (``mmie.arms.unlearn`` runs the adapter on whole sequences)."""

    method = "reft"

    def __init__(self, model, layers: list[int], rank: int, kind: str, init: str = "random") -> None:
        check_layers(model, layers)
        self.model = model
        self.layers = list(layers)
        self.rank, self.kind = rank, kind
        cls = intervention_class(kind)
        hidden = model.config.hidden_size
        extra = {"add_bias": True} if kind == "noreft" else {}
        self.interventions = torch.nn.ModuleDict({
            str(layer): cls(embed_dim=hidden, low_rank_dimension=rank, dtype=torch.float32, **extra)
            for layer in self.layers})
        if init == "identity":
            self._identity_init()
        elif init != "random":
            raise ConfigError(f"ReFT init {init!r} is not one of identity, random")
        self.interventions.to(next(model.parameters()).device)
        for p in model.parameters():
            p.requires_grad_(False)

    def _identity_init(self) -> None:
        """Start as the identity: the learned source equals the projection it replaces, with zero bias
        (LoReFT: W = R^T, b = 0, so R^T(Wh + b − Rh) = 0). pyreft's random start perturbs models with
        large residual streams (Gemma) far outside the retain budget before the first step."""
        module: Any   # a pyreft intervention (untyped; torch types its sub-layers as Tensor | Module)
        with torch.no_grad():
            for module in self.interventions.values():
                proj = module.rotate_layer.weight.T if self.kind == "loreft" else module.proj_layer.weight
                module.learned_source.weight.copy_(proj)
                if self.kind == "noreft" and module.proj_layer.bias is not None:
                    module.learned_source.bias.copy_(module.proj_layer.bias)
                else:
                    module.learned_source.bias.zero_()

    @classmethod
    def create(cls, model, spec: dict, layers: list[int]) -> "ReftAdapter":
        if spec["intervention"] == "loreft" and spec["train"]["weight_decay"] != 0:
            raise ConfigError("ReFT with LoReFT needs train.weight_decay: 0 (weight decay collapses its orthogonal "
                              "rotation to zero after one AdamW step)")
        return cls(model, layers, spec["rank"], spec["intervention"], spec["init"])

    def parameters(self):
        return list(self.interventions.parameters())

    def _edit(self, layer: int):
        module = self.interventions[str(layer)]

        def fn(hidden: torch.Tensor) -> torch.Tensor:
            to_hidden(module, hidden)
            return module(hidden.float()).to(hidden.dtype)
        return fn

    def _switched_on(self):
        return edit_layer_outputs(self.model, {layer: self._edit(layer) for layer in self.layers})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"layer{layer}.{k}": v.detach().clone().contiguous()
                for layer in self.layers for k, v in self.interventions[str(layer)].state_dict().items()}

    def expected_keys(self) -> set[str]:
        return set(self.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.expected_keys()
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ModelError(f"ReFT state does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for layer in self.layers:
            prefix = f"layer{layer}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            self.interventions[str(layer)].load_state_dict(sub)
        self.interventions.to(next(self.model.parameters()).device)
        for k, v in self.state_dict().items():
            if not torch.allclose(v.cpu(), state[k].cpu(), atol=1e-6):
                raise ModelError(f"ReFT tensor {k} did not load (values differ)")

    def _live_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.interventions.named_parameters()) | dict(self.interventions.named_buffers())

    def resume_state(self) -> dict[str, torch.Tensor]:
        """Every tensor of the interventions under torch's own names (for LoReFT: the orthogonal
        parametrization's ``original`` and ``base``, not the derived rotation that ``state_dict``
        holds), for resuming training bit for bit."""
        return {k: v.detach().cpu().clone() for k, v in self._live_tensors().items()}

    def load_resume_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``resume_state()`` in place. Unlike ``load_state_dict`` (pyreft rebuilds LoReFT's
        rotation module, so an optimizer built before would train orphaned tensors), the tensors
        the optimizer holds stay the same objects."""
        copy_tensors_in_place(self._live_tensors(), state, "ReFT")

    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        save_file(self.state_dict(), str(out / WEIGHTS))
        (out / CONFIG).write_text(json.dumps({"layers": self.layers, "rank": self.rank, "intervention": self.kind,
                                              "embed_dim": self.model.config.hidden_size}, indent=2))

    @classmethod
    def load(cls, model, ckpt_dir: str | Path) -> "ReftAdapter":
        from safetensors.torch import load_file

        path = Path(ckpt_dir)
        if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
            raise ModelError(f"no ReFT checkpoint in {path} (expected {WEIGHTS} and {CONFIG}); rerun its train rule")
        cfg = json.loads((path / CONFIG).read_text())
        if cfg["embed_dim"] != model.config.hidden_size:
            raise ModelError(f"ReFT checkpoint {path} was trained for hidden size {cfg['embed_dim']}, "
                             f"the model has {model.config.hidden_size}")
        adapter = cls(model, cfg["layers"], cfg["rank"], cfg["intervention"])
        adapter.load_state_dict(load_file(str(path / WEIGHTS)))
        adapter.interventions.eval()
        return adapter
