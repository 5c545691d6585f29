"""Statistics (docs/method.md §8): a bootstrap that matches the crossed design, paired comparisons against
``base`` on the same prompts, one-sided bounds and multiple-testing adjustments (reported). Pure NumPy, vectorised.

Every metric is a *ratio of sums* over prompts: ``transform(Σ num / Σ den)`` — a plain mean has
``den = 1`` (e.g. target_rate, ES), perplexity has ``num = NLL, den = tokens, transform = exp``,
the target-script share has ``num = target letters, den = letters``. Resampling prompts and
recomputing the ratio keeps token-weighting exact.

The design is *crossed*: the same evaluation prompts are used by every seed and every arm. One
bootstrap replicate therefore draws

* **one prompt-weight vector** (multinomial counts of P draws from the P prompts), applied to every
  seed of every arm in the comparison, and
* **seed weights** per arm: the S seeds of a seeded arm are resampled by the rescaled bootstrap of
  McCarthy & Snowden (1985) / Rao & Wu (1988) — S − 1 draws with replacement — which keeps the
  between-seed variance unbiased with as few as 3 seeds (the plain S-of-S bootstrap shrinks it by
  (S − 1)/S). Arms with the same seed list share the seed draw (paired by seed). A seed-independent
  arm has one run and weight 1.

Gate decisions use one-sided order-statistic bounds of the bootstrap distribution of a margin
``g`` (:func:`upper_bound`): the bound at level 1 − γ lies below 0 exactly when at most
⌊γ·B⌋ replicates are ≥ 0, i.e. exactly when the bootstrap p-value ``#{g ≥ 0}/B`` is ≤ γ — so the
test and the reported interval cannot disagree. A non-finite replicate counts against the gate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# replicates allowed on the wrong side: floor(gamma * B), with a tolerance for gamma * B that is an
# integer up to rounding (0.05 * 2000 must give 100, not 99)
_EPS = 1e-9


@dataclass(frozen=True)
class Sample:
    """Per-prompt numerators and denominators of one metric: one array per seed, the prompts in the
    same order in every seed (crossed design). ``seeds`` names the seeds (pairing across arms)."""

    num: list[np.ndarray]
    den: list[np.ndarray]
    transform: str = "identity"  # "identity" | "exp"
    seeds: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.num or len(self.num) != len(self.den):
            raise ValueError(f"a sample needs one num and one den array per seed (got {len(self.num)} num, "
                             f"{len(self.den)} den)")
        sizes = {len(n) for n in self.num} | {len(d) for d in self.den}
        if len(sizes) != 1:
            raise ValueError(f"crossed design: every seed must hold the same prompts, got per-seed sizes "
                             f"{[len(n) for n in self.num]} (num) and {[len(d) for d in self.den]} (den)")
        if self.seeds and len(self.seeds) != len(self.num):
            raise ValueError(f"{len(self.seeds)} seed names for {len(self.num)} seeds")

    @property
    def n_seeds(self) -> int:
        return len(self.num)

    @property
    def n_prompts(self) -> int:
        return len(self.num[0])

    @property
    def seed_key(self) -> tuple:
        return tuple(self.seeds) if self.seeds else tuple(range(self.n_seeds))

    def point(self) -> float:
        num = float(sum(n.sum() for n in self.num))
        den = float(sum(d.sum() for d in self.den))
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(_apply(self.transform, np.float64(num) / np.float64(den)))


def _apply(transform: str, x):
    return np.exp(x) if transform == "exp" else x


def counts(rng: np.random.Generator, n: int, n_boot: int, draws: int | None = None) -> np.ndarray:
    """Multinomial resampling counts (n_boot × n) of ``draws`` (default n) draws with replacement."""
    d = n if draws is None else draws
    idx = rng.integers(0, n, size=(n_boot, d)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def seed_weights(rng: np.random.Generator, n_seeds: int, n_boot: int) -> np.ndarray:
    """Rescaled seed bootstrap (n_boot × S): S − 1 draws with replacement; one seed → weight 1."""
    if n_seeds == 1:
        return np.ones((n_boot, 1))
    return counts(rng, n_seeds, n_boot, n_seeds - 1)


@dataclass(frozen=True)
class Draw:
    """The resampling of one comparison: one prompt-count vector per replicate, seed weights per
    distinct seed list."""

    prompts: np.ndarray            # B × P
    seeds: dict[tuple, np.ndarray]  # seed list -> B × S

    @property
    def n_boot(self) -> int:
        return self.prompts.shape[0]


def draw(samples: list[Sample], n_boot: int, seed: int) -> Draw:
    """One crossed resampling for samples that share their prompts (same P, same order)."""
    sizes = {s.n_prompts for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"paired comparison needs the same prompts in every arm: prompt counts "
                         f"{[s.n_prompts for s in samples]}")
    rng = np.random.default_rng(seed)
    prompts = counts(rng, sizes.pop(), n_boot)
    seeds: dict[tuple, np.ndarray] = {}
    for s in samples:
        if s.seed_key not in seeds:
            seeds[s.seed_key] = seed_weights(rng, s.n_seeds, n_boot)
    return Draw(prompts, seeds)


def replicates(sample: Sample, d: Draw) -> np.ndarray:
    """The statistic in every replicate of ``d`` (vectorised): weighted sums over prompts and seeds."""
    sw = d.seeds[sample.seed_key]
    num = ((d.prompts @ np.stack(sample.num).T) * sw).sum(axis=1)   # (B × P)(P × S) → B × S → B
    den = ((d.prompts @ np.stack(sample.den).T) * sw).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _apply(sample.transform, num / den)


def hierarchical_ci(sample: Sample, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Point estimate and two-sided percentile interval from the crossed bootstrap. Non-finite
    replicates (a resample whose denominator is 0) are left out of the quantiles and counted."""
    reps = replicates(sample, draw([sample], n_boot, seed))
    finite = reps[np.isfinite(reps)]
    if finite.size == 0:
        raise ValueError("no bootstrap replicate is finite (every resample has a zero denominator)")
    lo, hi = np.quantile(finite, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"estimate": sample.point(), "ci_low": float(lo), "ci_high": float(hi), "level": level,
            "n_boot": n_boot, "n_nonfinite": int(reps.size - finite.size), "rng_seed": seed,
            "n_seeds": sample.n_seeds, "n_prompts": sample.n_prompts}


# ----------------------------------------------------------------------------- paired margins
def threshold_of(base, relative: str, factor: float, floor: float | None = None):
    """``factor × base`` (relative="ratio"; at least ``floor`` when one is given, so that a perfect arm
    can pass where base is near 0), ``base + factor`` (relative="delta") or ``factor`` itself
    (relative="absolute"; base is not involved)."""
    if relative == "ratio":
        thr = factor * base
        return thr if floor is None else np.maximum(thr, floor)
    if relative == "delta":
        return base + factor
    if relative == "absolute":
        return np.zeros_like(np.asarray(base, dtype=float)) + factor
    raise ValueError(f"unknown relative {relative!r} (ratio, delta or absolute)")


def paired_reps(arm: Sample, base: Sample, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of arm and base under one crossed resampling (the same prompt vector for both)."""
    d = draw([arm, base], n_boot, seed)
    return replicates(arm, d), replicates(base, d)


def upper_bound(g: np.ndarray, gamma: float) -> float:
    """One-sided upper bound of level 1 − γ: the order statistic that lies below 0 exactly when at most
    ⌊γ·B⌋ replicates are ≥ 0 (a NaN replicate counts as +∞, i.e. against the gate)."""
    g = np.where(np.isnan(g), np.inf, g)
    k = math.floor(gamma * g.size + _EPS)
    if k >= g.size:
        return float("-inf")
    return float(np.sort(g)[g.size - 1 - k])


def lower_bound(g: np.ndarray, gamma: float) -> float:
    """One-sided lower bound of level 1 − γ (a NaN replicate counts as −∞)."""
    g = np.where(np.isnan(g), -np.inf, g)
    return -upper_bound(-g, gamma)


def p_at_least(g: np.ndarray, x: float = 0.0) -> float:
    """Bootstrap p-value of H0 "g ≥ x": the share of replicates ≥ x (NaN counts as ≥)."""
    return float(np.mean(~(g < x)))


def p_at_most(g: np.ndarray, x: float = 0.0) -> float:
    """Bootstrap p-value of H0 "g ≤ x" (NaN counts as ≤)."""
    return float(np.mean(~(g > x)))


def paired_margin(arm: Sample, base: Sample, *, relative: str, factor: float, n_boot: int, seed: int,
                  level: float = 0.95) -> dict:
    """Bootstrap of ``g = arm − threshold(base)`` on the same prompts (one crossed resampling for both).

    Returns g's estimate, a two-sided percentile interval at ``level`` (description only) and the
    one-sided p-values ``p_below`` (H0: g ≥ 0) and ``p_above`` (H0: g ≤ 0); ``reps`` holds g."""
    a, b = paired_reps(arm, base, n_boot, seed)
    g = a - threshold_of(b, relative, factor)
    point_base = base.point()
    threshold = float(threshold_of(point_base, relative, factor))
    finite = g[np.isfinite(g)]
    lo, hi = np.quantile(finite, [(1 - level) / 2, 1 - (1 - level) / 2]) if finite.size else (np.nan, np.nan)
    return {"value": arm.point(), "base": point_base, "threshold": threshold,
            "margin": arm.point() - threshold, "ci_low": float(lo), "ci_high": float(hi),
            "p_below": p_at_least(g), "p_above": p_at_most(g), "n_boot": int(g.size), "rng_seed": seed, "reps": g}


# ----------------------------------------------------------------------------- multiplicity
def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
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
    order = np.argsort(p, kind="stable")[::-1]
    adj = np.empty(m)
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, p[i] * m / rank)
        adj[i] = running
    return adj.tolist()


def bonferroni(pvalues: list[float]) -> list[float]:
    return [min(1.0, p * len(pvalues)) for p in pvalues]


def adjust(pvalues: list[float], method: str) -> list[float]:
    if not pvalues:
        return []
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    if method == "bonferroni":
        return bonferroni(pvalues)
    raise ValueError(f"unknown multiple-testing correction {method!r} (holm, bh or bonferroni)")
