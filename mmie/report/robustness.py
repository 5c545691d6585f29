"""The robustness table and figure (docs/method.md "Removed or hidden?"): every attack point of every
attacked arm with the crossed bootstrap's interval (``mmie.stats.inference``; seeds and items
resampled as in the headline intervals), base and the oracle beside each arm, and one reading per
arm and attack in words.

Readings (descriptive; no gate uses them unless one is configured):

- relearn: *steps to recover*, the first relearning step at which the forget target rate (point
  estimate over seeds) is at least ``robustness.recover_fraction`` of base's unattacked rate; "> K"
  when it never is within the grid. An arm that recovers in fewer steps than the oracle kept the
  language somewhere the oracle never had it: suppressed, not removed.
- incontext / quantize: the forget target rate at the strongest setting, against the arm's own
  unattacked rate and the oracle's at the same setting.
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


def steps_to_recover(df: pd.DataFrame, arm: str, base_rate: float, fraction: float) -> tuple[float | None, int]:
    """The first relearning step at which ``arm``'s forget target rate is >= fraction x base_rate
    (None when it never is), and the largest step measured."""
    sub = df[(df["attack"] == "relearn") & (df["arm"] == arm) & (df["set"] == "forget") & (df["metric"] == "target_rate")]
    sub = sub.sort_values("strength", key=lambda s: s.map(_strength_key))
    hit = sub[sub["estimate"] >= fraction * base_rate]
    return (float(hit["strength"].iloc[0]) if len(hit) else None), int(sub["strength"].max())


def readings(df: pd.DataFrame, *, base: str | None, oracle: str | None, fraction: float) -> pd.DataFrame:
    """One line per arm and attack in words (see the module doc)."""
    out = []
    if df.empty:
        return pd.DataFrame(columns=["arm", "attack", "value", "oracle", "reading"])

    def at(attack, arm, strength, set_name="forget", metric="target_rate"):
        sub = df[(df["attack"] == attack) & (df["arm"] == arm) & (df["set"] == set_name) & (df["metric"] == metric)
                 & (df["strength"].astype(str) == str(strength))]
        return float(sub["estimate"].iloc[0]) if len(sub) else math.nan

    arms = list(dict.fromkeys(df["arm"]))
    for attack in dict.fromkeys(df["attack"]):
        strengths = sorted(set(df[df["attack"] == attack]["strength"]), key=lambda v: _strength_key(v, attack))
        for arm in arms:
            if df[(df["attack"] == attack) & (df["arm"] == arm)].empty:
                continue
            if attack == "relearn":
                base_rate = at("relearn", base, strengths[0]) if base else math.nan
                if not math.isfinite(base_rate) or base_rate <= 0:
                    value, ref, text = math.nan, math.nan, "base's unattacked forget target rate is 0 or missing: no recovery to measure"
                else:
                    k, top = steps_to_recover(df, arm, base_rate, fraction)
                    ko = steps_to_recover(df, oracle, base_rate, fraction)[0] if oracle else None
                    def fmt(s, top=top):
                        return f"> {top}" if s is None else f"{s:g}"
                    value, ref = (math.inf if k is None else k), (math.inf if ko is None else ko)
                    text = (f"forget target rate back to {fraction:g} x base's after {fmt(k)} relearning steps"
                            + (f"; the oracle: {fmt(ko)}" if oracle else ""))
                    if oracle and arm not in (base, oracle) and value < ref:
                        text = "suppressed: " + text
            elif attack == "probe":
                probed = set(df[(df["attack"] == "probe") & (df["arm"] == arm)]["metric"])
                metric = "romanized_recall" if "romanized_recall" in probed else "target_recall"
                sub = df[(df["attack"] == "probe") & (df["arm"] == arm) & (df["metric"] == metric)]
                best = sub.loc[sub["estimate"].idxmax()] if len(sub) else None
                value = float(best["estimate"]) if best is not None else math.nan
                osub = df[(df["attack"] == "probe") & (df["arm"] == oracle) & (df["metric"] == metric)] if oracle else None
                ref = float(osub["estimate"].max()) if osub is not None and len(osub) else math.nan
                what = "romanized target texts" if metric == "romanized_recall" else "target texts"
                text = (f"{what} recognised by the best layer's probe (layer {best['strength']}): {value:.2f}"
                        if best is not None else "no probe point") + (f"; the oracle: {ref:.2f}" if math.isfinite(ref) else "")
            else:
                top, first = strengths[-1], strengths[0]
                value, ref, own = at(attack, arm, top), at(attack, oracle, top) if oracle else math.nan, at(attack, arm, first)
                what = {"incontext": f"with {top} in-context examples", "quantize": f"at {top} bit"}.get(attack, str(top))
                text = (f"forget target rate {what}: {value:.2f} (unattacked {own:.2f})"
                        + (f"; the oracle: {ref:.2f}" if math.isfinite(ref) else ""))
            out.append({"arm": arm, "attack": attack, "value": value, "oracle": ref, "reading": text})
    return pd.DataFrame(out)


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
