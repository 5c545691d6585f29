"""Per-study tuning of a trained arm on dev data (docs/method.md §6, "Tuning"): the grid of an arm's
``train.tune``, how a grid point changes the arm's settings, and the selection rule. No torch here:
the tune job (mmie.jobs.train.tune) trains each grid point with the ordinary training loop
(mmie.arms.unlearn.train) and hands the figures to :func:`choose`.

Grid: ``train.tune.lr`` (learning rates) × ``train.tune.retain_scale`` (multipliers of the arm's
retain-term weights: ``train.retain_kl`` and ``train.retain_nll`` for lora / reft, the arm's
``retain_weight`` for rmu). A list left out is the configured value alone (lr) or 1 (retain_scale).

Selection rule (:data:`RULE`): a grid point is *within budget* when its training kept a state
(some evaluated state's dev retain perplexity stayed <= ``train.max_retain_ppl_ratio`` × base, the
early-stopping budget of the train job) and that kept state's ratio is within it. Among those, the
largest increase of the forget dev NLL over base (kept state − base, nats per token) wins; ties
(within :data:`TIE_TOLERANCE`) go to the smaller lr, then the larger retain_scale. No point within
budget is an error naming the keys to change."""

from __future__ import annotations

import math
from typing import Any

from mmie.errors import ConfigError

TIE_TOLERANCE = 1e-6   # nats: forget NLL increases closer than this are a tie
RULE = ("among grid points whose training kept a state with dev retain perplexity <= train.max_retain_ppl_ratio x "
        "base, the largest forget dev NLL increase over base (kept state, nats/token); ties (within "
        f"{TIE_TOLERANCE:g}) -> smaller lr, then larger retain_scale")


class NoGridPointWithinBudget(RuntimeError):
    """Every grid point of a tuned arm left its retain budget (or diverged)."""


def tune_spec(spec: dict) -> dict | None:
    """The arm's ``train.tune`` block, or None when the arm is not tuned."""
    return (spec.get("train") or {}).get("tune") or None


def retain_keys(spec: dict) -> tuple[str, ...]:
    """The dotted keys a retain_scale multiplies: the arm's own ``retain_weight`` for a method that
    takes one (rmu), else ``train.retain_kl`` and ``train.retain_nll``."""
    from mmie.arms.methods import method

    if "retain_weight" in method(spec["method"]).keys:
        return ("retain_weight",)
    return ("train.retain_kl", "train.retain_nll")


def grid(spec: dict) -> list[dict]:
    """The grid points of a resolved arm spec, in order (lr ascending, then retain_scale ascending)."""
    tune = tune_spec(spec) or {}
    lrs = sorted(tune.get("lr") or [spec["train"]["lr"]])
    scales = sorted(tune.get("retain_scale") or [1.0])
    return [{"lr": float(lr), "retain_scale": float(s)} for lr in lrs for s in scales]


def apply(spec: dict, lr: float, retain_scale: float) -> tuple[dict, dict]:
    """A resolved arm spec with a grid point's values in place (``train.lr`` = lr, every retain key
    × retain_scale), without its ``tune`` block; and the overridden keys with their new values."""
    out = {**spec, "train": {k: v for k, v in spec["train"].items() if k != "tune"}}
    changed: dict[str, Any] = {"train.lr": float(lr)}
    out["train"]["lr"] = float(lr)
    for key in retain_keys(spec):
        if key.startswith("train."):
            name = key.split(".", 1)[1]
            out["train"][name] = changed[key] = float(spec["train"][name]) * retain_scale
        else:
            out[key] = changed[key] = float(spec[key]) * retain_scale
    return out, changed


def within_budget(point: dict, max_ratio: float) -> bool:
    """A grid point's result is within budget (written so that NaN is not)."""
    ratio = point.get("retain_ppl_ratio")
    return point.get("status") == "ok" and ratio is not None and ratio <= max_ratio and \
        math.isfinite(point.get("forget_nll_increase", math.nan))


def choose(points: list[dict], max_ratio: float, arm: str) -> dict:
    """The chosen grid point (see the module doc). ``points``: one result per grid point with
    ``lr``, ``retain_scale``, ``status`` ("ok", or why training kept no state), ``retain_ppl_ratio``
    and ``forget_nll_increase`` (of the kept state). Raises :class:`NoGridPointWithinBudget` naming
    the keys to change when none is within budget."""
    ok = [p for p in points if within_budget(p, max_ratio)]
    if not ok:
        seen = "; ".join(f"lr {p['lr']:g} x retain_scale {p['retain_scale']:g}: {p.get('status')}"
                         + (f" (ratio {p['retain_ppl_ratio']:.3g})" if p.get("retain_ppl_ratio") is not None else "")
                         for p in points)
        raise NoGridPointWithinBudget(
            f"arm {arm}: no grid point of arms.{arm}.train.tune stayed within the retain budget "
            f"(dev retain perplexity <= {max_ratio:g} x base): {seen}. Add smaller learning rates to "
            f"arms.{arm}.train.tune.lr (or larger arms.{arm}.train.tune.retain_scale values), evaluate more often "
            f"(arms.{arm}.train.eval_every) or raise arms.{arm}.train.max_retain_ppl_ratio.")
    best = max(p["forget_nll_increase"] for p in ok)
    tied = [p for p in ok if p["forget_nll_increase"] >= best - TIE_TOLERANCE]
    return min(tied, key=lambda p: (p["lr"], -p["retain_scale"]))


def check(arm: str, spec: dict) -> None:
    """``arms.<arm>.train.tune`` against the arm's method (at ``snakemake -n``)."""
    from mmie.arms.methods import method

    tune = (spec.get("train") or {}).get("tune")
    if tune is None:
        return
    key = f"arms.{arm}.train.tune"
    if not method(spec["method"]).trains:
        raise ConfigError(f"{key}: only a trained arm (lora, reft, rmu) can be tuned; method {spec['method']!r} "
                          f"trains nothing")
    if not (tune.get("lr") or tune.get("retain_scale")):
        raise ConfigError(f"{key}: give lr and/or retain_scale values (a grid of one point tunes nothing)")
    for name in ("lr", "retain_scale"):
        values = tune.get(name) or []
        if len(set(values)) != len(values):
            raise ConfigError(f"{key}.{name}: values repeat ({values})")
    if len(grid({**spec, "train": {"lr": 1.0, **spec["train"]}})) < 2:
        raise ConfigError(f"{key}: the grid has one point; give at least two values of lr or retain_scale")
