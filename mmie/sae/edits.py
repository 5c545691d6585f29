"""Edits of the residual stream (docs/method.md §6–7), each a pure function ``hidden -> hidden`` applied by
``mmie.model.hooks.edit_layer_outputs`` (a context manager: hooks are always removed on exit).

- ``sae_gate``: encode with the SAE, change the selected latents (scale by 1 − α, or clamp the
  active ones to −c), and add only the *change* of the decoded vector — the SAE's reconstruction
  error never enters the model, and with α = 0 the output is exactly the input;
- ``ablate``: remove the component along a direction (directional ablation, layer selection's
  causal score);
- ``steer``: subtract a difference-in-means vector (the ``dim`` arm);
- ``erase``: a rank-one LEACE eraser ``x − a·bᵀ(x − μ)`` (the ``script_scrub`` arm).

Which positions an edit acts on is the hook's business: the edit arms and the gate sweep pass the
tokenizer's special prefix to ``edit_layer_outputs(..., skip_prefix=...)``, which leaves padding and
that prefix bit-identical (the activation cache the edits are fitted on leaves them out).

No edit keeps state between calls: everything it computes is local to one forward pass. Each
moves its constant tensors to the hidden state's device and dtype when they differ (a model spread
over devices with ``device_map``); the moved copies are per device, never the activations."""

from __future__ import annotations

import torch

from mmie.errors import ConfigError


class _OnDevice:
    """Constant tensors, moved once per (device, dtype) the hidden state arrives on."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self._master = tensors
        self._copies: dict[tuple, dict[str, torch.Tensor]] = {}

    def on(self, hidden: torch.Tensor, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        dtype = dtype or hidden.dtype
        key = (hidden.device, dtype)
        if key not in self._copies:
            self._copies[key] = {k: (v if v.device == hidden.device and v.dtype == dtype
                                     else v.to(device=hidden.device, dtype=dtype))
                                 for k, v in self._master.items()}
        return self._copies[key]


class SaeCodec:
    """An SAE's encode/decode for the gate, through sae-lens' own ``encode``/``decode`` (so every
    option of the checkpoint — TopK, decoder-norm rescaling, b_dec on the input, activation
    normalisation — is honoured). The SAE module goes to the hidden state's device when it is
    elsewhere; computation is in the SAE's dtype and the change is cast back."""

    def __init__(self, sae) -> None:
        self.sae = sae.eval()
        for p in self.sae.parameters():
            p.requires_grad_(False)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def _placed(self, hidden: torch.Tensor):
        from mmie.model.hooks import to_hidden

        return to_hidden(self.sae, hidden)

    def encode(self, hidden: torch.Tensor) -> torch.Tensor:
        sae = self._placed(hidden)
        return sae.encode(hidden.to(sae.W_dec.dtype))

    def change(self, z: torch.Tensor, z_new: torch.Tensor) -> torch.Tensor:
        """decode(z_new) − decode(z): the reconstruction error cancels."""
        sae = self._placed(z)
        return sae.decode(z_new) - sae.decode(z)


def sae_gate(codec: SaeCodec, features: list[int], *, alpha: float = 1.0, mode: str = "scale",
             clamp: float = 0.0):
    """The gate edit for one layer (see the module doc)."""
    if not features:
        raise ConfigError("an SAE gate needs at least one feature (feature selection chose none)")
    if mode not in ("scale", "clamp"):
        raise ConfigError(f"gate mode {mode!r} is not scale or clamp")
    bad = [f for f in features if not 0 <= f < codec.d_sae]
    if bad:
        raise ConfigError(f"gate features {bad[:5]} are outside the SAE's {codec.d_sae} latents")
    idx = torch.tensor(sorted(set(int(f) for f in features)), dtype=torch.long)
    dev = _OnDevice(idx=idx)

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if mode == "scale" and alpha == 0:
            return hidden
        z = codec.encode(hidden)
        sel = dev.on(z, torch.long)["idx"]
        zs = z.index_select(-1, sel)
        if mode == "scale":
            new = zs * (1.0 - alpha)
        else:
            new = torch.where(zs > 0, torch.full_like(zs, -clamp), zs)
        z_new = z.index_copy(-1, sel, new)
        return hidden + codec.change(z, z_new).to(hidden.dtype)

    return edit


def ablate(direction: torch.Tensor):
    """Remove the component of the hidden state along ``direction``."""
    norm = direction.float().norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("cannot ablate a zero or non-finite direction")
    dev = _OnDevice(u=direction.float() / norm)

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        u = dev.on(hidden)["u"]
        return hidden - (hidden @ u).unsqueeze(-1) * u

    return edit


def steer(vector: torch.Tensor, strength: float = 1.0):
    """Move every position by ``−strength · vector`` (vector = mean target − mean retain)."""
    dev = _OnDevice(v=vector.float() * strength)

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        return hidden - dev.on(hidden)["v"]

    return edit


def erase(mean: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """Rank-one LEACE eraser ``x − a · bᵀ(x − μ)`` (see ``mmie.sae.directions.fit_leace``)."""
    dev = _OnDevice(mu=mean.float(), a=a.float(), b=b.float())

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        t = dev.on(hidden)
        return hidden - ((hidden - t["mu"]) @ t["b"]).unsqueeze(-1) * t["a"]

    return edit
