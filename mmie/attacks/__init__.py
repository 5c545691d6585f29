"""Robustness attacks (docs/method.md "Removed or hidden?"): does an arm's effect survive an attacker
who fine-tunes a little, quantizes, shows examples in context, or reads hidden states with a probe?
Every attack runs on every attacked arm (``robustness.arms``), base and the oracle included: the
oracle, a model that never learned the target language, is the reference each attack is read
against.

One module per attack, each declaring ``ATTACK = Attack(...)``; ``ATTACKS`` lists them in report
order. An attack job (rules/robustness.smk, ``mmie.jobs.robustness``) loads one (arm, seed) once and
writes ``<arm>/seed<k>/robustness/<attack>.json`` (``result``): one ``point`` per (strength, set,
metric) with per-item numerators and denominators in the same item order in every seed and arm,
so that ``summary/robustness.csv`` gets the crossed bootstrap's intervals (``mmie.stats.inference``).

What each attack reads (never a test text for anything it fits or chooses):

- ``relearn``: a fresh LoRA trained on top of the arm (an edit arm stays on) for k steps on
  forget/holdout texts; measured on the forget test prompts at each k.
- ``quantize``: the arm merged into its model where it can be (else it stays on, said so), the model
  reloaded at 8 and 4 bit (bitsandbytes, NF4); forget and retain test prompts.
- ``incontext``: n forget/holdout sentences before each forget test prompt.
- ``probe``: a logistic-regression probe per layer on mean-pooled hidden states, fitted on train
  texts, its regularisation chosen on dev texts, scored on test texts (target vs retain vs
  neighbours)."""

from __future__ import annotations

from dataclasses import dataclass

#: attacks in report order (each is a module of this package)
ATTACKS = ("relearn", "quantize", "incontext", "probe")


@dataclass(frozen=True)
class Attack:
    name: str
    summary: str            # one line: docs, the report
    strength: str           # what the strength axis means ("steps", "bits", "shots", "layer")
    reads: str              # the data it reads, for docs and provenance


def point(strength, set_name: str, metric: str, ids: list, num: list[float], den: list[float] | None = None,
          transform: str = "identity", **extra) -> dict:
    """One measured point of an attack: per-item numerators/denominators (a mean: ``den`` all ones;
    perplexity: NLL and tokens with ``transform="exp"``), items identified by ``ids``."""
    den = [1.0] * len(num) if den is None else den
    if not (len(ids) == len(num) == len(den)) or not ids:
        raise ValueError(f"attack point {set_name}/{metric} at {strength}: {len(ids)} ids, {len(num)} numerators, "
                         f"{len(den)} denominators (must be equal and non-zero)")
    return {"strength": strength, "set": set_name, "metric": metric, "ids": list(ids),
            "num": [float(x) for x in num], "den": [float(x) for x in den], "transform": transform, **extra}
