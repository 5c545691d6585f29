"""The results page: per arm, one sentence generated from the numbers, and the headline table with
confidence intervals (Markdown)."""

from __future__ import annotations

import pandas as pd

HEADLINE = [("forget", "target_rate"), ("forget", "es"), ("retain", "ppl"), ("retain", "token_kl"),
            ("romanized", "target_rate"), ("mixed", "es"), ("adversarial", "target_rate"), ("forget", "gen_ppl_base"),
            ("forget", "mia_auc"), ("comprehension", "comprehension_rate"), ("yes_no", "yes_no_accuracy")]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def cell(iv: pd.DataFrame, arm: str, set_name: str, metric: str) -> str:
    r = iv[(iv.arm == arm) & (iv.set == set_name) & (iv.metric == metric)]
    if r.empty:
        return "—"
    r = r.iloc[0]
    return f"{_fmt(r.estimate)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"


def headline(iv: pd.DataFrame, arms: list[str], sets: list[str]) -> pd.DataFrame:
    cols = [(s, m) for s, m in HEADLINE if s in sets]
    return pd.DataFrame([{"arm": a, **{f"{s}:{m}": cell(iv, a, s, m) for s, m in cols}} for a in arms])


def _get(iv, arm, set_name, metric):
    r = iv[(iv.arm == arm) & (iv.set == set_name) & (iv.metric == metric)]
    return None if r.empty else r.iloc[0]


def sentence(iv: pd.DataFrame, arm: str, decision: dict | None, target: str, retain: str) -> str:
    """One sentence per arm, from the numbers."""
    parts = []
    tr, tr_b = _get(iv, arm, "forget", "target_rate"), _get(iv, "base", "forget", "target_rate")
    if tr is not None and tr_b is not None:
        parts.append(f"{target} on forget prompts {_fmt(tr_b.estimate)} → {_fmt(tr.estimate)} "
                     f"[{_fmt(tr.ci_low)}, {_fmt(tr.ci_high)}]")
    pp, pp_b = _get(iv, arm, "retain", "ppl"), _get(iv, "base", "retain", "ppl")
    if pp is not None and pp_b is not None:
        parts.append(f"{retain} perplexity ×{pp.estimate / pp_b.estimate:.2f}")
    shares = iv[(iv.arm == arm) & (iv.set == "forget") & iv.metric.str.startswith("lang_share_")]
    if not shares.empty:
        top = shares.sort_values("estimate", ascending=False).iloc[0]
        parts.append(f"forget prompts now mostly answered in `{top.metric.removeprefix('lang_share_')}` "
                     f"({top.estimate:.0%})")
    rom = _get(iv, arm, "romanized", "target_rate")
    if rom is not None:
        parts.append(f"romanized {target} prompts still answered in {target} {rom.estimate:.0%}")
    text = f"**{arm}**: " + "; ".join(parts) if parts else f"**{arm}**: no headline metric available"
    if decision is not None:
        text += f" — **{decision['decision']}**"
        if decision["failing"]:
            text += f" (failing: {', '.join(decision['failing'])})"
    return text + "."


def page(iv: pd.DataFrame, gates: pd.DataFrame, decisions: dict, arms: list[str], sets: list[str], config: dict) -> str:
    target = config["languages"]["target"].get("name", config["languages"]["target"]["code"])
    retain = config["languages"]["retain"].get("name", config["languages"]["retain"]["code"])
    st = config["stats"]
    lines = [f"# Results: {config['experiment']}", "",
             f"Estimates over seeds {config['seeds']} with {st['level']:.0%} hierarchical-bootstrap intervals "
             f"(seeds, then prompts; {st['n_boot']} resamples, RNG seed {st['rng_seed']}). Gates: one-sided paired "
             f"bootstrap tests against `base` on the same prompts, {st['correction']}-corrected per arm, alpha {st['alpha']}.",
             "", "## What happened", ""]
    lines += [f"- {sentence(iv, a, decisions.get(a), target, retain)}" for a in arms]
    table = headline(iv, arms, sets)
    lines += ["", "## Headline metrics", "", "| " + " | ".join(table.columns) + " |",
              "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False)]
    lines += ["", "## Gates", "", "| arm | gate | value | threshold | margin CI | p (adj.) | passed |", "|---|---|---|---|---|---|---|"]
    for r in gates.itertuples(index=False):
        if r.p_value is None or pd.isna(r.p_value):
            lines.append(f"| {r.arm} | {r.gate} | — | — | — | — | no: {r.reason} |")
        else:
            lines.append(f"| {r.arm} | {r.gate} | {_fmt(r.value)} | {_fmt(r.threshold)} | "
                         f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}] | {r.p_adjusted:.3g} | {'yes' if r.passed else 'no'} |")
    return "\n".join(lines) + "\n"
