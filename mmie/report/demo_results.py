"""The demo's headline results as data: the table in docs/demo.md is generated from a run by this
module (never typed), and CI compares a fresh run of the demo against the expected table committed in
tests/expected/demo.json.

    python -m mmie.report.demo_results table   results/demo docs/demo.md     # rewrite the generated block
    python -m mmie.report.demo_results expect  results/demo tests/expected/demo.json
    python -m mmie.report.demo_results compare results/demo tests/expected/demo.json

Tolerance (why): the demo pins its CPU numerics (mmie/numerics.py), so a rerun on any x86-64 CPU with
AVX2 is expected to give identical numbers, and ``compare`` reports whether it did. What it *requires*
is that the conclusions hold: the same chosen layers, the same decision for every arm, and every
headline estimate inside the committed run's 95 % interval (and the committed estimate inside the
fresh run's interval). Anything else fails with the rows that moved."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from mmie import io

HEADLINE = [("forget", "target_rate", "Hindi rate, forget prompts"),
            ("romanized", "target_rate", "Hindi rate, romanized prompts"),
            ("forget", "lang_share_en", "forget prompts answered in English"),
            ("forget", "lang_share_noise", "forget prompts answered with noise"),
            ("forget", "fluency_ratio", "fluency ratio, forget outputs"),
            ("retain", "ppl", "English perplexity"),
            ("retain", "token_kl", "token KL to base (retain)"),
            ("forget", "mia_auc", "MIA AUC (forget members)")]
BEGIN, END = "<!-- BEGIN generated: demo-results -->", "<!-- END generated: demo-results -->"


def fill_block(doc: str | Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->``
    in ``doc`` (generated tables live only there; the rest of the page is written by hand)."""
    begin, end = f"<!-- BEGIN generated: {name} -->", f"<!-- END generated: {name} -->"
    content = Path(doc).read_text(encoding="utf-8")
    if begin not in content or end not in content:
        raise SystemExit(f"{doc}: no '{begin}' ... '{end}' block to fill")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    io.write_text(doc, head + begin + "\n" + text + end + tail)


def collect(results: str | Path) -> dict:
    """Headline rows, decisions and the chosen layers of a finished run."""
    results = Path(results)
    iv = pd.read_csv(results / "summary" / "intervals.csv")
    decisions = io.read_json(results / "summary" / "decisions.json")
    arms = list(dict.fromkeys(iv["arm"]))
    rows = []
    for arm in arms:
        for set_name, metric, _ in HEADLINE:
            r = iv[(iv.arm == arm) & (iv.set == set_name) & (iv.metric == metric)]
            if r.empty:
                continue
            r = r.iloc[0]
            rows.append({"arm": arm, "set": set_name, "metric": metric, "estimate": float(r.estimate),
                         "ci_low": float(r.ci_low), "ci_high": float(r.ci_high),
                         "n_seeds": int(r.n_seeds) if "n_seeds" in r and not pd.isna(r.n_seeds) else None})
    selection = results / "layers" / "selection.json"
    layers = io.read_json(selection).get("layers") if selection.exists() else None
    commit = decisions.get("_provenance", {}).get("git", {})   # the commit that ran, not today's HEAD
    arms_only = {a: d for a, d in decisions.items() if not a.startswith("_")}
    readings = results / "summary" / "robustness_readings.csv"
    robustness = pd.read_csv(readings)[["arm", "attack", "reading"]].to_dict("records") if readings.exists() else []
    return {"commit": commit.get("commit"), "dirty": commit.get("dirty"), "changed": commit.get("changed"),
            "layers": layers, "rows": rows,
            "robustness": robustness,
            "decisions": {a: d["decision"] for a, d in arms_only.items()},
            "failing": {a: {g: d.get("verdicts", {}).get(g, "") for g in d["failing"]} for a, d in arms_only.items()}}


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) >= 0.01 or x == 0 else f"{x:.1e}"


def _uncommitted(run: dict) -> str:
    """What the run's commit note says about uncommitted changes: none, their files, or that there were some
    (records made before the files were listed)."""
    if not run.get("dirty"):
        return ""
    changed = run.get("changed")
    return f" with uncommitted changes to {', '.join(f'`{c}`' for c in changed)}" if changed else \
        " (with uncommitted changes)"


def markdown(run: dict) -> str:
    by = {(r["arm"], r["set"], r["metric"]): r for r in run["rows"]}
    # an arm that FAILED has no estimates but keeps its row
    arms = list(dict.fromkeys([r["arm"] for r in run["rows"]] + list(run["decisions"])))
    cols = [(s, m, label) for s, m, label in HEADLINE if any((a, s, m) in by for a in arms)]
    lines = [f"Generated by `python -m mmie.report.demo_results table` from a run of commit `{str(run['commit'])[:12]}`"
             f"{_uncommitted(run)}; layer(s) chosen: {run['layers']}. "
             "Estimate [95 % interval]; arms evaluated once (seedless) show one seed's prompts.", "",
             "| arm | " + " | ".join(label for _, _, label in cols) + " | decision | failing gates |",
             "|---" * (len(cols) + 3) + "|"]
    for a in arms:
        cells = []
        for s, m, _ in cols:
            r = by.get((a, s, m))
            cells.append("—" if r is None else f"{_fmt(r['estimate'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
        failing = run.get("failing", {}).get(a, {})
        why = ", ".join(f"{g} ({VERDICT.get(v, v)})" if v else g for g, v in failing.items()) or "—"
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {run['decisions'].get(a, '—')} | {why} |")
    lines += ["", "Failing gates: *shown* — the gate's 90 % interval lies wholly on the wrong side of its threshold; "
              "*not excluded* — it straddles the threshold; *missing* — no value (docs/method.md §8)."]
    if run.get("robustness"):
        lines += ["", "Removed or hidden? The robustness attacks' readings (`summary/robustness_readings.csv`; "
                  "estimates with intervals in `summary/robustness.csv`):", "", "| arm | attack | reading |",
                  "|---|---|---|"]
        lines += [f"| {r['arm']} | {r['attack']} | {r['reading']} |" for r in run["robustness"]]
    return "\n".join(lines) + "\n"


VERDICT = {"shown": "shown", "not_excluded": "not excluded", "missing": "missing"}


def write_table(results: str | Path, doc: str | Path, block: str = "demo-results") -> None:
    fill_block(doc, block, markdown(collect(results)))


def compare(results: str | Path, expected_path: str | Path) -> tuple[bool, list[str]]:
    """(ok, lines): ok when the conclusions hold (see the module doc)."""
    exp, run = io.read_json(expected_path), collect(results)
    got = {(r["arm"], r["set"], r["metric"]): r for r in run["rows"]}
    problems, identical, within = [], 0, 0
    if exp["layers"] != run["layers"]:
        problems.append(f"layer selection chose {run['layers']}, expected {exp['layers']}")
    for arm, decision in exp["decisions"].items():
        if run["decisions"].get(arm) != decision:
            problems.append(f"{arm}: decision {run['decisions'].get(arm)}, expected {decision}")
    for r in exp["rows"]:
        g = got.get((r["arm"], r["set"], r["metric"]))
        name = f"{r['arm']} {r['set']}:{r['metric']}"
        if g is None:
            problems.append(f"{name}: missing from the run")
        elif g["estimate"] == r["estimate"]:
            identical += 1
        elif r["ci_low"] <= g["estimate"] <= r["ci_high"] and g["ci_low"] <= r["estimate"] <= g["ci_high"]:
            within += 1
        else:
            problems.append(f"{name}: {g['estimate']:.6g} [{g['ci_low']:.4g}, {g['ci_high']:.4g}], expected "
                            f"{r['estimate']:.6g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]")
    lines = [f"{identical} of {len(exp['rows'])} headline estimates identical to the expected run "
             f"(commit {str(exp['commit'])[:12]}), {within} different but inside both intervals"]
    return not problems, lines + problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmie.report.demo_results", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["table", "expect", "compare"])
    ap.add_argument("results", help="results/<experiment> of a finished run")
    ap.add_argument("target", help="docs file to fill (table) or expected JSON (expect, compare)")
    ap.add_argument("--block", default="demo-results",
                    help="table: the '<!-- BEGIN generated: BLOCK -->' block of the docs file to fill")
    a = ap.parse_args(argv)
    if a.action == "table":
        write_table(a.results, a.target, a.block)
    elif a.action == "expect":
        io.write_text(a.target, json.dumps(collect(a.results), indent=1, sort_keys=True) + "\n")
    else:
        ok, lines = compare(a.results, a.target)
        print("\n".join(lines))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
