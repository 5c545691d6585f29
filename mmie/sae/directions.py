"""Directions fitted on cached activations (docs/method.md §6): the difference in means target − retain
(``dim`` arm, layer selection) and a rank-one LEACE eraser for target-script vs romanized
(``script_scrub`` arm).

LEACE (Belrose et al., 2023) for a binary concept: with W = Σ^{-1/2} (whitening by the pooled
covariance) and δ = μ₁ − μ₀, the least-squares eraser is ``r(x) = x − W⁺ P W (x − μ)`` where P
projects onto Wδ. With u = Wδ/‖Wδ‖ this is ``x − a·bᵀ(x − μ)``, a = Σ^{1/2}u, b = Σ^{-1/2}u: after
it, both classes have the same mean (tested), so no linear probe can tell them apart by the mean."""

from __future__ import annotations

from pathlib import Path

import torch

from mmie.errors import DataError


def mean_difference(target: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """μ_target − μ_other of two [n, d] activation sets."""
    if len(target) == 0 or len(other) == 0:
        raise DataError("a difference in means needs activations on both sides")
    return target.double().mean(0).float() - other.double().mean(0).float()


def fit_leace(x0: torch.Tensor, x1: torch.Tensor, shrinkage: float = 1e-3) -> dict[str, torch.Tensor]:
    """Rank-one LEACE eraser between classes 0 and 1 ([n, d] each). ``shrinkage`` adds
    ``shrinkage · tr(Σ)/d · I`` to the covariance so a rank-deficient Σ stays invertible."""
    if len(x0) < 2 or len(x1) < 2:
        raise DataError("LEACE needs at least two activations per class")
    x = torch.cat([x0, x1]).double()
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / (len(x) - 1)
    d = cov.shape[0]
    cov = cov + shrinkage * torch.trace(cov) / d * torch.eye(d, dtype=cov.dtype)
    evals, evecs = torch.linalg.eigh(cov)
    if evals.min() <= 0:
        raise DataError("LEACE: the activation covariance is not positive definite even after shrinkage")
    sqrt = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    inv_sqrt = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    delta = x1.double().mean(0) - x0.double().mean(0)
    wd = inv_sqrt @ delta
    if wd.norm() == 0:
        raise DataError("LEACE: the two classes have the same mean; there is nothing to erase")
    u = wd / wd.norm()
    return {"mean": mu.float(), "a": (sqrt @ u).float(), "b": (inv_sqrt @ u).float()}


def fit_layer_directions(acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer: ``dim`` (forget − retain, token level) and the script eraser
    (forget in the target script vs the same texts romanized)."""
    out = {"dim": mean_difference(acts["forget"], acts["retain"])}
    leace = fit_leace(acts["forget_romanized"], acts["forget"])
    out.update({f"scrub.{k}": v for k, v in leace.items()})
    return out


def save_directions(path: str | Path, directions: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from mmie.io import atomic_path

    with atomic_path(path, ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in directions.items()}, str(tmp), metadata=meta)


def load_directions(path: str | Path, *, layer: int, fingerprint: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    from mmie.errors import ConfigError

    if not Path(path).exists():
        raise FileNotFoundError(f"directions file {path} does not exist; run cache_activations")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            out = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as err:
        raise DataError(f"directions file {path} cannot be read ({err}); delete it and rerun cache_activations") from err
    if int(meta.get("layer", -1)) != layer or meta.get("model_fingerprint") != fingerprint:
        raise ConfigError(f"directions {path} were fitted for layer {meta.get('layer')} of model "
                          f"{meta.get('model_fingerprint')}, not layer {layer} of {fingerprint}")
    return out
