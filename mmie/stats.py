"""Statistics (METHOD §8): hierarchical bootstrap over seeds and prompts, paired comparisons against
``base`` on the same prompts, multiple-testing corrections. Pure NumPy and vectorised.

Every metric is a *ratio of sums* over prompts: ``transform(Σ num / Σ den)`` — a plain mean has
``den = 1`` (e.g. target_rate, ES), perplexity has ``num = NLL, den = tokens, transform = exp``,
the target-script share has ``num = target letters, den = letters``. Resampling prompts and
recomputing the ratio keeps token-weighting exact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """Per-prompt numerators and denominators of one metric, one array pair per seed."""

    num: list[np.ndarray]
    den: list[np.ndarray]
    transform: str = "identity"  # "identity" | "exp"

    def point(self) -> float:
        return _apply(self.transform, sum(n.sum() for n in self.num) / sum(d.sum() for d in self.den))


def _apply(transform: str, x):
    return np.exp(x) if transform == "exp" else x


def _indices(rng: np.random.Generator, sizes: list[int], n_boot: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Seed resampling (n_boot × S) and, per original seed, prompt resampling (n_boot × n_s)."""
    s = len(sizes)
    seeds = rng.integers(0, s, size=(n_boot, s))
    prompts = [rng.integers(0, n, size=(n_boot, n)) for n in sizes]
    return seeds, prompts


def _resampled(sample: Sample, seeds: np.ndarray, prompts: list[np.ndarray]) -> np.ndarray:
    """Statistic for each bootstrap replicate (vectorised over replicates)."""
    # per original seed and replicate: resampled sums of num and den
    num_s = np.stack([sample.num[i][prompts[i]].sum(axis=1) for i in range(len(sample.num))], axis=1)  # B × S
    den_s = np.stack([sample.den[i][prompts[i]].sum(axis=1) for i in range(len(sample.den))], axis=1)
    rows = np.arange(seeds.shape[0])[:, None]
    num = num_s[rows, seeds].sum(axis=1)
    den = den_s[rows, seeds].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _apply(sample.transform, num / den)


def hierarchical_ci(sample: Sample, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Point estimate and percentile CI: resample seeds, then prompts within each resampled seed."""
    rng = np.random.default_rng(seed)
    seeds, prompts = _indices(rng, [len(n) for n in sample.num], n_boot)
    reps = _resampled(sample, seeds, prompts)
    reps = reps[np.isfinite(reps)]
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"estimate": float(sample.point()), "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot,
            "rng_seed": seed, "n_seeds": len(sample.num), "n_prompts": int(sum(len(n) for n in sample.num))}


def paired_margin(arm: Sample, base: Sample, *, relative: str, factor: float, n_boot: int, seed: int,
                  level: float = 0.95) -> dict:
    """Bootstrap of ``g = arm − threshold(base)`` on the same prompts (the same resampling indices for
    both): ``threshold = factor × base`` (relative="ratio") or ``base + factor`` (relative="delta").

    Returns g's estimate and CI and one-sided p-values for H0: g ≥ 0 (``p_below``: evidence that the
    arm is below the threshold) and H0: g ≤ 0 (``p_above``)."""
    sizes = [len(n) for n in arm.num]
    if sizes != [len(n) for n in base.num]:
        raise ValueError(f"paired comparison needs the same prompts per seed: arm {sizes}, base "
                         f"{[len(n) for n in base.num]}")
    rng = np.random.default_rng(seed)
    seeds, prompts = _indices(rng, sizes, n_boot)
    a = _resampled(arm, seeds, prompts)
    b = _resampled(base, seeds, prompts)
    thr = factor * b if relative == "ratio" else b + factor
    g = a - thr
    ok = np.isfinite(g)
    g = g[ok]
    point_base = base.point()
    threshold = factor * point_base if relative == "ratio" else point_base + factor
    lo, hi = np.quantile(g, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"value": float(arm.point()), "base": float(point_base), "threshold": float(threshold),
            "margin": float(arm.point() - threshold), "ci_low": float(lo), "ci_high": float(hi),
            "p_below": float((np.sum(g >= 0) + 1) / (len(g) + 1)),
            "p_above": float((np.sum(g <= 0) + 1) / (len(g) + 1)), "n_boot": int(len(g)), "rng_seed": seed}


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj.tolist()


def benjamini_hochberg(pvalues: list[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (step-up, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p)[::-1]
    adj = np.empty(m)
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, p[i] * m / rank)
        adj[i] = running
    return adj.tolist()


def adjust(pvalues: list[float], method: str) -> list[float]:
    if not pvalues:
        return []
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    raise ValueError(f"unknown multiple-testing correction {method!r} (holm or bh)")
