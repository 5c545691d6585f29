"""Robustness attacks (docs/method.md "Removed or hidden?"): does an arm's effect survive an attacker
who fine-tunes a little, quantizes, shows examples in context, or reads hidden states with a probe?
Every attack runs on every attacked arm (``robustness.arms``), base and the oracle included: the
oracle, a model that never learned the target language, is the reference each attack is read
against.

One module per attack, each declaring ``ATTACK = Attack(...)``; ``ATTACKS`` lists them in report
order. An attack job (rules/robustness.smk, ``mmie.jobs.robustness``) loads one (arm, seed) once, runs
every attack on it and writes ``<arm>/seed<k>/robustness/<attack>.json`` for each (``result``): one ``point`` per (strength, set,
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


#: attacks whose own randomness (a fresh adapter's initialisation, its batch order) makes each seed a
#: run even for a seed-independent arm
SEEDED = frozenset({"relearn"})


def attacked_arms(config: dict) -> list[str]:
    """The arms attacked, in config order: ``robustness.arms`` (every arm when null) plus base and the
    oracle as references. An unknown arm is a ConfigError naming the key."""
    from mmie.config import oracle_arm
    from mmie.errors import ConfigError

    rob = config["robustness"]
    if not rob["attacks"]:
        return []
    wanted = rob["arms"]
    if wanted is None:
        return list(config["arms"])
    unknown = [a for a in wanted if a not in config["arms"]]
    if unknown:
        raise ConfigError(f"robustness.arms: {unknown} are not arms of this config ({', '.join(config['arms'])})")
    refs = {a for a, spec in config["arms"].items() if spec["method"] == "base"} | ({oracle_arm(config)} - {None})
    return [a for a in config["arms"] if a in set(wanted) | refs]


def attack_seeds(config: dict, arm: str, attack: str) -> list[int]:
    """The seeds ``attack`` runs ``arm`` at: ``robustness.seeds`` (every seed when null) for a seeded
    arm or a seeded attack, the first of them otherwise (the arm and the attack are deterministic)."""
    from mmie.config import is_seeded
    from mmie.errors import ConfigError

    seeds = [int(s) for s in config["seeds"]]
    wanted = config["robustness"]["seeds"]
    if wanted is not None:
        unknown = [s for s in wanted if int(s) not in seeds]
        if unknown or not wanted:
            raise ConfigError(f"robustness.seeds: {wanted} must be a non-empty subset of seeds {seeds}")
        seeds = [s for s in seeds if s in {int(w) for w in wanted}]
    return seeds if (attack in SEEDED or is_seeded(config, arm)) else seeds[:1]


def attack_runs(config: dict) -> list[tuple[str, str, int]]:
    """Every (attack, arm, seed) the study runs, in report order."""
    return [(attack, arm, seed) for attack in config["robustness"]["attacks"] for arm in attacked_arms(config)
            for seed in attack_seeds(config, arm, attack)]
