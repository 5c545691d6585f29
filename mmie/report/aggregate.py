"""Aggregation (docs/method.md §8, §11): per-job metrics.json → a tidy long table, a summary per arm × set ×
metric over seeds, a Markdown summary of the headline metrics, and the table of recorded failures."""

from __future__ import annotations

import logging

import pandas as pd

from mmie import io

log = logging.getLogger(__name__)
HEADLINE = ("target_rate", "es", "target_script_share", "own_language_rate", "ppl", "gen_ppl_base",
            "repetitive_share", "target_rate_romanized")


def collect(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, failures = [], []
    for p in paths:
        m = io.read_json(p)
        for metric, value in m["metrics"].items():
            rows.append({"arm": m["arm"], "seed": m["seed"], "set": m["set"], "metric": metric, "value": value})
        for metric, reason in m["failures"].items():
            failures.append({"arm": m["arm"], "seed": m["seed"], "set": m["set"], "metric": metric, "reason": reason})
    long = pd.DataFrame(rows, columns=["arm", "seed", "set", "metric", "value"])
    fails = pd.DataFrame(failures, columns=["arm", "seed", "set", "metric", "reason"])
    return long, fails


def summarize(long: pd.DataFrame, arms: list[str], sets: list[str]) -> pd.DataFrame:
    """Per arm × set × metric: mean, sd, min, max over seeds and the number of seeds (long form)."""
    g = long.groupby(["arm", "set", "metric"], sort=False)["value"]
    summary = g.agg(mean="mean", sd="std", min="min", max="max", n_seeds="count").reset_index()
    summary["arm"] = pd.Categorical(summary["arm"], categories=arms, ordered=True)
    summary["set"] = pd.Categorical(summary["set"], categories=sets, ordered=True)
    return summary.sort_values(["arm", "set", "metric"]).reset_index(drop=True)


def wide(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per arm × set; for each metric its mean over seeds and ``<metric>_sd``."""
    mean = summary.pivot_table(index=["arm", "set"], columns="metric", values="mean", observed=True)
    sd = summary.pivot_table(index=["arm", "set"], columns="metric", values="sd", observed=True, dropna=False)
    sd.columns = [f"{c}_sd" for c in sd.columns]
    n = summary.groupby(["arm", "set"], observed=True)["n_seeds"].max().rename("n_seeds")
    cols = [c for m in mean.columns for c in (m, f"{m}_sd")]
    return pd.concat([n, mean, sd], axis=1)[["n_seeds"] + cols].reset_index()


def markdown(summary: pd.DataFrame, fails: pd.DataFrame, experiment: str, failed_jobs: pd.DataFrame | None = None) -> str:
    lines = [f"# mmie summary: {experiment}", "",
             "Mean over seeds (± standard deviation over seeds). Per-prompt values are in each job's metrics.json.", ""]
    if failed_jobs is not None and not failed_jobs.empty:
        from mmie.failures import markdown_table

        lines += ["## Failed runs (left out of every table below)", "",
                  *markdown_table(failed_jobs.to_dict("records")), ""]
    for metric in HEADLINE:
        sub = summary[summary["metric"] == metric]
        if sub.empty:
            continue
        wide = sub.assign(cell=[f"{m:.3g} ± {s:.2g}" if pd.notna(s) else f"{m:.3g}"
                                for m, s in zip(sub["mean"], sub["sd"], strict=True)])
        table = wide.pivot(index="arm", columns="set", values="cell").dropna(how="all")
        table = table.loc[:, [c for c in table.columns if table[c].notna().any()]]
        lines += [f"## {metric}", "", "| arm | " + " | ".join(map(str, table.columns)) + " |",
                  "|---|" + "---|" * len(table.columns)]
        for arm, row in table.iterrows():
            lines.append(f"| {arm} | " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
        lines.append("")
    lines += ["## Recorded metric failures", ""]
    if fails.empty:
        lines.append("None.")
    else:
        lines += ["| arm | seed | set | metric | reason |", "|---|---|---|---|---|"]
        lines += [f"| {r.arm} | {r.seed} | {r.set} | {r.metric} | {r.reason} |" for r in fails.itertuples()]
    return "\n".join(lines) + "\n"


def judge_agreement(paths: list[str]) -> pd.DataFrame:
    """Judge vs LID per arm × seed × set: Cohen's kappa and the confusion counts (empty without a judge)."""
    rows = []
    for p in paths:
        m = io.read_json(p)
        agree = m["diagnostics"].get("judge_agreement")
        if agree:
            rows.append({"arm": m["arm"], "seed": m["seed"], "set": m["set"], **agree})
    return pd.DataFrame(rows, columns=["arm", "seed", "set", "kappa", "both_target", "judge_only", "lid_only",
                                       "neither"])
