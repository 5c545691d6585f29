"""The robustness table and figure (docs/method.md "Removed or hidden?"): every attack point of every
attacked arm with the crossed bootstrap's interval (``mmie.stats.inference``; seeds and items
resampled as in the headline intervals), base and the oracle beside each arm, and one reading per
arm and attack in words.

Readings (descriptive; no gate uses them unless one is configured):

- relearn, incontext, quantize: the weakest strength at which the forget target rate (point estimate
  over seeds) is back to ``robustness.recover_fraction`` of base's unattacked rate (for relearn: the
  *steps to recover*); "> K" when it never is within the grid. An arm that comes back where the oracle
  does not (sooner, or at all) kept the language somewhere the oracle never had it: suppressed, not
  removed. An arm already at or above that rate unattacked had nothing suppressed.
- probe: the best layer's recall of romanized target test texts (in the retain language's script:
  recognising them takes knowing the language; the native script gives any model the answer), against
  the oracle's; the native-script recall where no romanized texts were probed."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from mmie import io

log = logging.getLogger(__name__)

COLUMNS = ["attack", "arm", "method", "strength", "set", "metric", "estimate", "ci_low", "ci_high", "level",
           "n_seeds", "n_items", "seeds", "base", "oracle"]


def _strength_key(value, attack: str | None = None) -> tuple:
    """Strengths from the weakest attack to the strongest: "full" (the unattacked precision) first, then
    fewer and fewer bits (quantize), or more steps, shots or a deeper layer (the others)."""
    if value == "full":
        return (0, 0.0)
    return (1, -float(value) if attack == "quantize" else float(value))


def load(paths: list[str]) -> list[dict]:
    from mmie.failures import real

    found, lost = real(list(paths))
    if lost:
        log.warning("robustness: %d attack job(s) failed and are left out: %s", len(lost),
                    ", ".join(f"{f['rule']} {f['wildcards']}" for f in lost))
    return [io.read_json(p) for p in found]


def table(results: list[dict], *, n_boot: int, rng_seed: int, level: float, base: str | None,
          oracle: str | None) -> pd.DataFrame:
    """One row per (attack, arm, strength, set, metric): estimate and interval over the arm's seeds
    and the items (the same items, in the same order, in every seed: checked)."""
    from mmie.stats.inference import Sample, hierarchical_ci

    groups: dict[tuple, list[tuple[int, dict]]] = {}
    methods = {}
    for res in results:
        methods[res["arm"]] = res["method"]
        for p in res["points"]:
            key = (res["attack"], res["arm"], p["strength"], p["set"], p["metric"])
            groups.setdefault(key, []).append((res["seed"], p))
    rows = []
    for (attack, arm, strength, set_name, metric), runs in groups.items():
        runs.sort(key=lambda r: r[0])
        ids = runs[0][1]["ids"]
        for seed, p in runs[1:]:
            if p["ids"] != ids:
                raise ValueError(f"robustness: {attack} {arm} {set_name}/{metric} at {strength}: seed {seed} measured "
                                 f"other items than seed {runs[0][0]} (the crossed bootstrap needs the same items)")
        sample = Sample(num=[np.asarray(p["num"], float) for _, p in runs], den=[np.asarray(p["den"], float) for _, p in runs],
                        transform=runs[0][1]["transform"], seeds=tuple(s for s, _ in runs))
        ci = hierarchical_ci(sample, n_boot, rng_seed, level)
        rows.append({"attack": attack, "arm": arm, "method": methods[arm], "strength": strength, "set": set_name,
                     "metric": metric, "estimate": ci["estimate"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                     "level": level, "n_seeds": ci["n_seeds"], "n_items": ci["n_prompts"],
                     "seeds": " ".join(str(s) for s, _ in runs)})
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("base", "oracle")])
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    for ref, col in ((base, "base"), (oracle, "oracle")):
        ref_rows = df[df["arm"] == ref].set_index(["attack", "strength", "set", "metric"])["estimate"] if ref else None
        df[col] = [ref_rows.get((a, s, st, m), math.nan) if ref_rows is not None else math.nan
                   for a, s, st, m in zip(df["attack"], df["strength"], df["set"], df["metric"], strict=True)]
    order = {a: i for i, a in enumerate(dict.fromkeys(r["arm"] for r in results))}
    from mmie.attacks import ATTACKS

    df["_a"] = df["attack"].map({a: i for i, a in enumerate(ATTACKS)})
    df["_arm"] = df["arm"].map(order)
    df["_s"] = [_strength_key(v, a) for v, a in zip(df["strength"], df["attack"], strict=True)]
    df = df.sort_values(["_a", "_arm", "set", "metric", "_s"]).drop(columns=["_a", "_arm", "_s"]).reset_index(drop=True)
    return df


def recovered_at(df: pd.DataFrame, attack: str, arm: str, threshold: float) -> tuple[str | float | None, list]:
    """The weakest strength of ``attack`` at which ``arm``'s forget target rate (point estimate over its
    seeds) is >= threshold (None when none is), and the strengths measured, weakest first."""
    sub = df[(df["attack"] == attack) & (df["arm"] == arm) & (df["set"] == "forget") & (df["metric"] == "target_rate")]
    order = sorted(sub["strength"], key=lambda v: _strength_key(v, attack))
    rate = dict(zip(sub["strength"], sub["estimate"], strict=True))
    return next((s for s in order if rate[s] >= threshold), None), order


def steps_to_recover(df: pd.DataFrame, arm: str, base_rate: float, fraction: float) -> tuple[float | None, int]:
    """The first relearning step at which ``arm``'s forget target rate is >= fraction x base_rate
    (None when it never is), and the largest step measured."""
    k, order = recovered_at(df, "relearn", arm, fraction * base_rate)
    return (None if k is None else float(k)), int(max(order))


#: how each attack's strength reads in a sentence
_UNITS = {"relearn": ("after {} relearning steps", "> {}"), "incontext": ("with {} in-context examples", "> {}"),
          "quantize": ("at {} bit", "not at {} bit")}


def readings(df: pd.DataFrame, *, base: str | None, oracle: str | None, fraction: float) -> pd.DataFrame:
    """One line per arm and attack in words (see the module doc). relearn, incontext and quantize share
    one rule: the threshold is ``fraction`` x base's unattacked forget target rate; an arm already at or
    above it unattacked had nothing suppressed to recover; otherwise the weakest strength that brings it
    back (``value``: the strength, inf when none does), the oracle's beside it (``oracle``), and
    "suppressed" when the arm comes back where the oracle does not (sooner, or at all)."""
    cols = ["arm", "attack", "value", "oracle", "suppressed", "reading"]
    out = []
    if df.empty:
        return pd.DataFrame(columns=cols)
    arms = list(dict.fromkeys(df["arm"]))
    value: float | str   # a row's "value" and "oracle": a number, or quantize's strength as measured
    ref: float | str

    def rate(attack, arm, strength):
        sub = df[(df["attack"] == attack) & (df["arm"] == arm) & (df["set"] == "forget") & (df["metric"] == "target_rate")
                 & (df["strength"].astype(str) == str(strength))]
        return float(sub["estimate"].iloc[0]) if len(sub) else math.nan

    for attack in dict.fromkeys(df["attack"]):
        for arm in arms:
            if df[(df["attack"] == attack) & (df["arm"] == arm)].empty:
                continue
            suppressed = False
            if attack == "probe":
                probed = set(df[(df["attack"] == "probe") & (df["arm"] == arm)]["metric"])
                metric = "romanized_recall" if "romanized_recall" in probed else "target_recall"
                sub = df[(df["attack"] == "probe") & (df["arm"] == arm) & (df["metric"] == metric)]
                best = sub.loc[sub["estimate"].idxmax()] if len(sub) else None
                value = float(best["estimate"]) if best is not None else math.nan
                osub = df[(df["attack"] == "probe") & (df["arm"] == oracle) & (df["metric"] == metric)] if oracle else None
                ref = float(osub["estimate"].max()) if osub is not None and len(osub) else math.nan
                what = "romanized target texts" if metric == "romanized_recall" else "target texts"
                text = (f"{what} recognised by the best layer's probe (layer {best['strength']}): {value:.2f}"
                        if best is not None else "no probe point") + (
                    f"; the oracle: {ref:.2f}" if math.isfinite(ref) and arm != oracle else "")
                out.append({"arm": arm, "attack": attack, "value": value, "oracle": ref, "suppressed": False,
                            "reading": text})
                continue
            strengths = recovered_at(df, attack, arm, math.inf)[1]
            weakest = strengths[0]
            base_rate = rate(attack, base, weakest) if base else math.nan
            own = rate(attack, arm, weakest)
            phrase, never = _UNITS.get(attack, ("at {}", "> {}"))
            if not math.isfinite(base_rate) or base_rate <= 0:
                value, ref = math.nan, math.nan
                text = "base's unattacked forget target rate is 0 or missing: no recovery to measure"
            elif own >= fraction * base_rate:
                value, ref = math.nan, math.nan
                text = (f"not suppressed to begin with: forget target rate {own:.2f} unattacked, at or above "
                        f"{fraction:g} x base's {base_rate:.2f}") if arm != base else f"base: forget target rate {own:.2f}"
            else:
                threshold = fraction * base_rate
                k, order = recovered_at(df, attack, arm, threshold)
                ko = recovered_at(df, attack, oracle, threshold)[0] if oracle else None
                pos = {s: i for i, s in enumerate(order)}

                def say(s, order=order, phrase=phrase, never=never):
                    return phrase.format(s) if s is not None else never.format(order[-1])
                value = math.inf if k is None else pos[k]
                ref = (math.inf if ko is None else pos.get(ko, math.inf)) if oracle else math.nan
                suppressed = bool(oracle) and arm != oracle and k is not None and value < ref
                text = (f"forget target rate back to {fraction:g} x base's ({threshold:.2f}) {say(k)}"
                        + (f"; the oracle: {say(ko)}" if oracle and arm != oracle else ""))
                if k is not None:
                    value = float(k) if attack != "quantize" else k
                if ko is not None and oracle:
                    ref = float(ko) if attack != "quantize" else ko
                if suppressed:
                    text = "suppressed: " + text
            out.append({"arm": arm, "attack": attack, "value": value, "oracle": ref, "suppressed": suppressed,
                        "reading": text})
    return pd.DataFrame(out, columns=cols)


def figure(df: pd.DataFrame, *, base: str | None, oracle: str | None, target: str, level: float = 0.95):
    """One panel per attack: the forget target rate (probe: romanized target recall) per strength, one line per
    arm with its interval; base and the oracle dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(df["attack"])) if not df.empty else []
    fig, axes = plt.subplots(1, max(1, len(attacks)), figsize=(4.6 * max(1, len(attacks)) + 1, 4.2), squeeze=False)
    if not attacks:
        axes[0][0].text(0.5, 0.5, "no robustness attack finished", ha="center", va="center")
        return fig
    for ax, attack in zip(axes[0], attacks, strict=True):
        probed = set(df[df["attack"] == "probe"]["metric"])
        metric = ("romanized_recall" if "romanized_recall" in probed else "target_recall") if attack == "probe" \
            else "target_rate"
        set_name = "probe" if attack == "probe" else "forget"
        sub = df[(df["attack"] == attack) & (df["metric"] == metric) & (df["set"] == set_name)]
        strengths = sorted(set(sub["strength"]), key=lambda v: _strength_key(v, attack))
        pos = {s: i for i, s in enumerate(strengths)}
        for arm in dict.fromkeys(sub["arm"]):
            a = sub[sub["arm"] == arm]
            x = [pos[s] for s in a["strength"]]
            style = "--" if arm in (base, oracle) else "-"
            line, = ax.plot(x, a["estimate"], style, marker="o", label=arm)
            ax.fill_between(x, a["ci_low"], a["ci_high"], alpha=0.15, color=line.get_color())
        ax.set_xticks(range(len(strengths)), [str(s) for s in strengths])
        ax.set_xlabel({"relearn": "relearning steps", "quantize": "precision (bits)", "incontext": "in-context examples",
                       "probe": "layer"}.get(attack, "strength"))
        ax.set_ylabel(f"probe recall of {'romanized ' if metric == 'romanized_recall' else ''}{target} (test)"
                      if attack == "probe" else f"{target} rate on forget prompts")
        ax.set_ylim(0, 1.02)
        ax.set_title(attack)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"Robustness: the target language under attack ({level:.0%} intervals; base and the oracle dashed)")
    fig.tight_layout()
    return fig


def apply_gate(readings: pd.DataFrame, decisions: dict, rows: list[dict]) -> None:
    """The optional robustness gate (``robustness.gate``, off by default: its rule has not been
    calibrated on arms known to remove and known to suppress). Each arm with a decision gets one row
    per generation attack (relearn, incontext, quantize) in ``rows``: it passes unless the reading
    says "suppressed" (back where the oracle is not); a suppressed arm STOPs, the reading its reason."""
    for r in readings.itertuples():
        if r.attack == "probe" or r.arm not in decisions or decisions[r.arm]["decision"] == "FAILED":
            continue
        gate, suppressed = f"robustness_{r.attack}", bool(r.suppressed)
        rows.append({"arm": r.arm, "gate": gate, "metric": "recovery", "set": "forget", "value": r.value,
                     "threshold": r.oracle, "passed": not suppressed, "reason": r.reading if suppressed else "",
                     "verdict": "suppressed" if suppressed else "passed", "reference": "oracle",
                     "relative": "first strength back to recover_fraction x base's rate, against the oracle's"})
        if suppressed:
            d = decisions[r.arm]
            d["decision"] = "STOP"
            d["failing"] = [g for g in d["failing"] if g != "(no gates)"] + [gate]
            d["reasons"][gate] = r.reading
            d["verdicts"][gate] = "suppressed"
