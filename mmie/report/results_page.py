"""The results page: per arm, one sentence generated from the numbers, and the headline table with
confidence intervals (Markdown)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd

HEADLINE = [("forget", "target_rate"), ("forget", "es"), ("retain", "ppl"), ("retain", "token_kl"),
            ("romanized", "target_rate"), ("mixed", "es"), ("adversarial", "target_rate"), ("forget", "fluency_ratio"),
            ("forget", "lang_share_noise"), ("forget", "mia_auc"), ("comprehension", "comprehension_chrf"),
            ("yes_no", "yes_no_accuracy")]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _interval(lo: float, hi: float) -> str:
    """A one-sided interval shows its open end: (−∞, u] or [l, ∞)."""
    left = "(−∞" if lo == float("-inf") else f"[{_fmt(lo)}"
    right = "∞)" if hi == float("inf") else f"{_fmt(hi)}]"
    return f"{left}, {right}"


def unmeasurable(measurable: dict | None) -> set[str]:
    """The metrics base itself cannot do on this model (``mmie.stats.gates.measurability``)."""
    return {m for v in (measurable or {}).values() if not v["measurable"] for m in v["metrics"]}


def cell(iv: pd.DataFrame, arm: str, set_name: str, metric: str, not_measurable: set[str] | frozenset[str] = frozenset()) -> str:
    r = iv[(iv.arm == arm) & (iv.set == set_name) & (iv.metric == metric)]
    if r.empty:
        return "—"
    r = r.iloc[0]
    text = f"{_fmt(r.estimate)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
    if metric in not_measurable:
        text += " (not measurable on this model)"
    if metric == "gen_ppl_base":
        # perplexity of the non-empty outputs: how many were empty goes next to it
        e = iv[(iv.arm == arm) & (iv.set == set_name) & (iv.metric == "empty_share")]
        if not e.empty:
            n = int(e.iloc[0].n_prompts)
            text += f" ({round(e.iloc[0].estimate * n)} of {n} outputs empty)"
    return text


def seeds_cell(iv: pd.DataFrame, arm: str) -> str:
    r = iv[iv.arm == arm]
    if r.empty or "n_seeds" not in r:
        return "—"
    n, seeded = int(r.iloc[0].n_seeds), bool(r.iloc[0].seeded)
    return f"{n}" if seeded else f"{n} (seed-independent)"


def headline(iv: pd.DataFrame, arms: list[str], sets: list[str], measurable: dict | None = None) -> pd.DataFrame:
    cols = [(s, m) for s, m in HEADLINE if s in sets]
    nm = unmeasurable(measurable)
    return pd.DataFrame([{"arm": a, "seeds": seeds_cell(iv, a),
                          **{f"{s}:{m}": cell(iv, a, s, m, nm) for s, m in cols}} for a in arms])


_TEX = {"\\": r"\textbackslash ", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde ", "^": r"\textasciicircum "}


def _tex(text: str) -> str:
    """``text`` with LaTeX's special characters escaped in one pass (as pandas' ``escape="latex"``
    does: an escape's own braces are never escaped again)."""
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX[m.group()], text)


def latex(table: pd.DataFrame, caption: str) -> str:
    """The headline table as a LaTeX (booktabs) table for a paper: one row per arm, estimate and
    interval per column; cells and headers escaped by pandas' Styler (``escape="latex"``), the
    caption by ``_tex``."""
    styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, caption=_tex(caption), position="t", position_float="centering",
                           environment="table")


def samples_html(config: Mapping, generations: dict[tuple[str, str], list[dict]], n: int) -> str:
    """The first ``n`` prompts of every set with each arm's output side by side (the arm's first
    seed), so a reader sees what the numbers mean: Hindi, English, a neighbour language or noise."""
    import html

    arms = list(dict.fromkeys(a for a, _ in generations))
    sets = list(dict.fromkeys(s for _, s in generations))
    out = [f"<h1>Sample generations: {html.escape(config['experiment'])}</h1>",
           f"<p>The first {n} prompts of each evaluation set and every arm's output (seed "
           f"{config['seeds'][0]}; greedy decoding unless configured otherwise).</p>"]
    for s in sets:
        out.append(f"<h2>{html.escape(s)}</h2><table border='1' cellpadding='4' style='border-collapse:collapse'>")
        out.append("<tr><th>prompt</th>" + "".join(f"<th>{html.escape(a)}</th>" for a in arms) + "</tr>")
        first = generations[(arms[0], s)][:n]
        by_arm = {a: {r["id"]: r for r in generations[(a, s)]} for a in arms}
        for row in first:
            cells = []
            for a in arms:
                r = by_arm[a].get(row["id"])
                text = "(missing)" if r is None else (r["output"] if r["output"].strip() else "(empty)")
                cells.append(f"<td>{html.escape(text)}</td>")
            out.append(f"<tr><td>{html.escape(row['prompt'])}</td>" + "".join(cells) + "</tr>")
        out.append("</table>")
    return "<html><head><meta charset='utf-8'></head><body>\n" + "\n".join(out) + "\n</body></html>\n"


def _get(iv, arm, set_name, metric):
    r = iv[(iv.arm == arm) & (iv.set == set_name) & (iv.metric == metric)]
    return None if r.empty else r.iloc[0]


def answer_languages(iv: pd.DataFrame, arm: str, set_name: str, languages: dict) -> str:
    """Where the outputs of a set went, from the LID's labels (validated on labelled generations):
    "in Hindi 13 %, in English 55 %, in a neighbour language 4 %, noise 28 %" (shares of 1 % or more)."""
    shares = iv[(iv.arm == arm) & (iv.set == set_name) & iv.metric.str.startswith("lang_share_")]
    if shares.empty:
        return ""
    share = {r.metric.removeprefix("lang_share_"): float(r.estimate) for r in shares.itertuples()}
    t, rt = languages["target"], languages["retain"]
    groups = [(f"in {t.get('name', t['code'])}", [t["code"]]),
              (f"in romanized {t.get('name', t['code'])}", [f"{t['code']}_rom"]),
              (f"in {rt.get('name', rt['code'])}", [rt["code"]]),
              ("in a neighbour language", list(languages.get("neighbours", {}))),
              ("noise", ["noise"]), ("undetermined", ["und"])]
    parts = [(name, sum(share.get(c, 0.0) for c in codes)) for name, codes in groups]
    return ", ".join(f"{name} {v:.0%}" for name, v in parts if v >= 0.005)


def sentence(iv: pd.DataFrame, arm: str, decision: dict | None, target: str, retain: str,
             languages: dict | None = None) -> str:
    """One sentence per arm, from the numbers."""
    languages = languages or {"target": {"code": "hi"}, "retain": {"code": "en"}}
    parts = []
    tr, tr_b = _get(iv, arm, "forget", "target_rate"), _get(iv, "base", "forget", "target_rate")
    if tr is not None and tr_b is not None:
        parts.append(f"{target} on forget prompts {_fmt(tr_b.estimate)} → {_fmt(tr.estimate)} "
                     f"[{_fmt(tr.ci_low)}, {_fmt(tr.ci_high)}]")
    pp, pp_b = _get(iv, arm, "retain", "ppl"), _get(iv, "base", "retain", "ppl")
    if pp is not None and pp_b is not None:
        parts.append(f"{retain} perplexity ×{pp.estimate / pp_b.estimate:.2f}")
    answered = answer_languages(iv, arm, "forget", languages)
    if answered:
        parts.append(f"forget prompts answered {answered}")
    rom = _get(iv, arm, "romanized", "target_rate")
    if rom is not None:
        parts.append(f"romanized {target} prompts still answered in {target} {rom.estimate:.0%}")
    text = f"**{arm}**: " + "; ".join(parts) if parts else f"**{arm}**: no headline metric available"
    if decision is not None:
        text += f" — **{decision['decision']}**"
        if decision["failing"]:
            verdicts = decision.get("verdicts", {})
            shown = [g for g in decision["failing"] if verdicts.get(g) == "shown"]
            open_ = [g for g in decision["failing"] if verdicts.get(g) == "not_excluded"]
            missing = [g for g in decision["failing"] if g not in shown + open_]
            why = ([f"harm shown: {', '.join(shown)}"] if shown else []) + \
                  ([f"harm not excluded: {', '.join(open_)}"] if open_ else []) + \
                  ([f"not measured: {', '.join(missing)}"] if missing else [])
            text += f" ({'; '.join(why)})"
    return text + "."


def layer_choice(selection: dict) -> str:
    """One line on the layer-selection checkpoint's choice, saying how stable it was; an unstable or
    tied choice is flagged, never reported as a plain choice."""
    layers = selection["layers"]
    if selection.get("forced"):
        return f"- **Layers** {layers}: forced by `layers.force_layers` (no selection ran)."
    freq = selection.get("frequency", {})
    shares = ", ".join(f"layer {k}: {float(v):.0%}" for k, v in sorted(freq.items(), key=lambda kv: -float(kv[1])))
    margin = selection.get("margin") or {}
    text = (f"- **Layers** {layers}, chosen on dev texts in {len(selection.get('resamples', []))} resamples "
            f"(selection frequency {shares}; margin over the runner-up, layer {margin.get('runner_up')}: "
            f"{_fmt(float(margin.get('mean_score', float('nan'))))} in mean score).")
    if selection.get("tie"):
        text += f" **TIE**: broken by {selection.get('tie_broken_by')}."
    if not selection.get("stable"):
        text += (f" **UNSTABLE**: the choice falls below the stability floor "
                 f"({selection.get('stability_floor')}); results that depend on the layer (ReFT, gates, dim, "
                 f"script_scrub) may change with the data or the machine.")
    return text


def tuning_section(tunings: list[dict]) -> list[str]:
    """Markdown lines on the tuned arms (rule tune, mmie.arms.tuning): the rule, and per arm every grid
    point's dev figures with the chosen one marked. Empty when no arm was tuned."""
    if not tunings:
        return []
    lines = ["", f"Trained arms tuned on dev data at seed {tunings[0]['seed']} (the choice is used for every seed). "
                 f"Rule: {tunings[0]['rule']}.", "",
             "| arm | lr | retain scale | kept step | dev retain ppl / base | forget dev NLL increase | chosen |",
             "|---|---|---|---|---|---|---|"]
    for t in tunings:
        chosen = (t["chosen"]["lr"], t["chosen"]["retain_scale"])
        for p in t["points"]:
            ratio = "—" if p.get("retain_ppl_ratio") is None else f"{p['retain_ppl_ratio']:.3f}"
            gain = "—" if p.get("forget_nll_increase") is None else f"{p['forget_nll_increase']:+.3f}"
            mark = "**chosen**" if (p["lr"], p["retain_scale"]) == chosen else (
                "" if p.get("within_budget") else f"over budget ({p['status']})" if p["status"] != "ok" else "over budget")
            lines.append(f"| {t['arm']} | {p['lr']:g} | {p['retain_scale']:g} | {p.get('kept_step', '—')} | {ratio} | "
                         f"{gain} | {mark} |")
    lines += ["", "Retain scale multiplies the arm's retain-term weights (" + "; ".join(
        f"{t['arm']}: {', '.join(t['retain_scale_multiplies'])}" for t in tunings) + ")."]
    return lines


def feature_choice(features: list[dict]) -> list[str]:
    """One line per layer on how many latents the SAE gate took and why (derived at select_features:
    fewer than features.n_features when fewer pass the filters or the random control could not match more)."""
    from mmie.sae.features import explain_n_features

    return [f"- **SAE gate, layer {f['layer']}** ({f['method']} selection): {explain_n_features(f['n_features'])}."
            for f in sorted(features, key=lambda f: int(f["layer"])) if f.get("n_features")]


def lid_quality(report: dict) -> list[str]:
    """Lines on the LID's own quality: per-label precision and recall on the hand-labelled check set
    and, when given, on hand-labelled generations (``lid/lid_report.json``)."""
    lines = []
    for key, what in (("lid_audit", "hand-labelled generations of real arms (`data.lid_audit`)"),
                      ("lid_check", "clean hand-labelled sentences (`data.lid_check`)")):
        conf = report.get(key)
        if not conf:
            continue
        pr = conf["precision_recall"]
        lines += ["", f"On {conf['n']} {what}: accuracy {conf['accuracy']:.0%}.", "",
                  "| label | precision | recall | items | predicted |", "|---|---|---|---|---|"]
        for lab, v in pr.items():
            if not (v["support"] or v["predicted"]):
                continue
            p = "—" if v["precision"] is None else f"{v['precision']:.2f}"
            r = "—" if v["recall"] is None else f"{v['recall']:.2f}"
            lines.append(f"| {lab} | {p} | {r} | {v['support']} | {v['predicted']} |")
    return lines


def page(iv: pd.DataFrame, gates: pd.DataFrame, decisions: dict, arms: list[str], sets: list[str], config: Mapping,
         selection: dict | None = None, measurable: dict | None = None, lid_report: dict | None = None,
         forget_quality: dict | None = None, tuning: list[dict] | None = None,
         failed: list[dict] | None = None, features: list[dict] | None = None,
         robustness: pd.DataFrame | None = None) -> str:
    target = config["languages"]["target"].get("name", config["languages"]["target"]["code"])
    retain = config["languages"]["retain"].get("name", config["languages"]["retain"]["code"])
    st = config["stats"]
    lines = [f"# Results: {config['experiment']}", "",
             f"Estimates with {st['level']:.0%} intervals from a crossed bootstrap ({st['n_boot']} replicates, RNG "
             f"seed {st['rng_seed']}): each replicate resamples the evaluation prompts once — the same prompt "
             f"vector for every seed and every arm compared — and the seeds of seeded arms (S − 1 draws, "
             f"rescaled bootstrap). Seeded arms (trained, random_gate, on a trained arm, or sampled decoding) "
             f"ran with seeds {config['seeds']}; the others are seed-independent and ran once "
             f"(seed {config['seeds'][0]}). Gates: paired comparison with `base` on the same prompts; a gate "
             f"passes exactly when its one-sided bound (level after {st['correction']} over the arm's gates, "
             f"alpha {st['alpha']}) clears the threshold. Forget-set perplexity under base (`gen_ppl_base`) is "
             f"computed on non-empty outputs; empty and repetitive outputs are gated (collapse is a failure).",
             ""]
    if failed:
        from mmie.failures import markdown_table

        lines += ["## Failed runs", "",
                  f"{len(failed)} (arm, seed) run(s) failed and are left out of every estimate, gate and plot below "
                  "(everything else is computed as without them). Fix the cause and run snakemake again: the failed "
                  "job reruns, and so does what depends on it (summary/failed_jobs.csv).", "",
                  *markdown_table(failed), ""]
    lines += ["## What happened", ""]
    lines += [f"- {sentence(iv, a, decisions.get(a), target, retain, config['languages'])}" for a in arms]
    lines += [f"- **{a}**: FAILED — no run finished ({decisions[a]['failed_runs'][0]['rule']}: "
              f"{decisions[a]['failed_runs'][0]['error'][:200]})" for a in decisions
              if not a.startswith("_") and decisions[a].get("decision") == "FAILED"]
    if selection is not None or tuning:
        lines += ["", "## Choices made on dev data"] + (["", layer_choice(selection)] if selection is not None else [])
        lines += feature_choice(features or []) + tuning_section(tuning or [])
    notes = [v["reason"] for v in (measurable or {}).values() if not v["measurable"]]
    if notes:
        lines += ["", "## Capabilities base does not show", ""] + [f"- {n}: not gated, and a low value of an "
                                                                     f"arm there means nothing." for n in notes]
    if lid_report is not None:
        quality = lid_quality(lid_report)
        if quality:
            lines += ["", "## How far the language labels can be trusted", "",
                      "Every output's language (and so every target rate, ES and \"answered in …\" above) comes "
                      "from the LID; `noise` is word salad, character runs or mixed-script debris, `und` another "
                      "language or too little text."] + quality
    fq = {a: v for a, v in (forget_quality or {}).items() if not a.startswith("_") and v.get("p_value") is not None}
    if fq:
        lines += ["", "## Forget quality (against the oracle)", "",
                  "TOFU's forget quality: the p-value of a Kolmogorov–Smirnov test between the arm's and the "
                  "oracle's Min-K%++ scores of the forget/train members (high: the arm cannot be told from a model "
                  "that never saw them; low: it can). Reported, not gated.", "",
                  "| arm | forget quality (KS p) | KS statistic |", "|---|---|---|"]
        lines += [f"| {a} | {v['p_value']:.3g} | {v['ks_statistic']:.3f} |" for a, v in fq.items()]
    if robustness is not None:
        lines += ["", "## Removed or hidden? (robustness attacks)", "",
                  "Each arm attacked as a user could attack it, base and the oracle (the model that never learned the "
                  "language) beside it: a fresh LoRA trained on forget/holdout texts (relearn), the merged model "
                  "reloaded at 8 and 4 bit (quantize), forget/holdout sentences before each prompt (incontext), a "
                  "linear probe on each layer's hidden states (probe). An arm that gives the language back sooner "
                  "than the oracle picks it up was suppressed, not removed. Estimates with intervals: "
                  "`summary/robustness.csv`; figure: `plots/robustness.png`. Reported; gated only with "
                  "`robustness.gate: true` (off by default: not yet calibrated).", ""]
        lines += robustness_lines(robustness)
    table = headline(iv, arms, sets, measurable)
    lines += ["", "## Headline metrics", "", "| " + " | ".join(table.columns) + " |",
              "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False)]
    lines += ["", "## Gates", "",
              "Interval: of value − threshold for `<=`/`>=` gates (passes when wholly below/above 0), of arm − "
              "reference for `within` gates (passes when inside ±threshold), at the level shown. p: the gate's own "
              "one-sided p-value (the decision); p (adj.): adjusted over the arm's gates, for information.", "",
              "| arm | gate | value | threshold | reference | interval | level | p | p (adj.) | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in gates.itertuples(index=False):
        if r.p_value is None or pd.isna(r.p_value):
            what = "not configured" if r.verdict == "not_configured" else "missing"
            lines.append(f"| {r.arm} | {r.gate} | — | — | {r.reference} | — | — | — | — | {what}: {r.reason} |")
        else:
            verdict = "pass" if r.passed else f"{r.verdict.replace('_', ' ')}: {r.reason}"
            lines.append(f"| {r.arm} | {r.gate} | {_fmt(r.value)} | {_fmt(r.threshold)} | {r.reference} "
                         f"{_fmt(r.base)} | {_interval(r.ci_low, r.ci_high)} | {r.ci_level:.4g} | {r.p_value:.3g} | "
                         f"{r.p_adjusted:.3g} | {verdict} |")
    return "\n".join(lines) + "\n"


def robustness_lines(readings: pd.DataFrame) -> list[str]:
    """The robustness readings (``mmie.report.robustness.readings``) as a Markdown table."""
    if readings.empty:
        return ["No robustness attack finished (see the failed runs)."]
    return ["| arm | attack | reading |", "|---|---|---|"] + [
        f"| {r.arm} | {r.attack} | {r.reading} |" for r in readings.itertuples()]
