"""The study's utility table (``summary/utility.csv``) from every (arm, seed)'s ``utility.json``
(rules/utility.smk): one row per arm, seed, task and metric, with lm-eval's own standard error and,
as information, the value relative to base at the same seed (base's mean over its seeds when base has
no run at that seed). No gate reads it (docs/method.md, "Utility through lm-eval")."""

from __future__ import annotations

import logging

import pandas as pd

from mmie import io

log = logging.getLogger(__name__)

COLUMNS = ["arm", "method", "seed", "task", "metric", "value", "stderr", "n", "num_fewshot", "limit", "version",
           "higher_is_better", "base_value", "ratio_to_base", "delta_to_base"]


def rows(path: str) -> list[dict]:
    res = io.read_json(path)
    out = []
    for task, rec in res["tasks"].items():
        for metric, value in rec["metrics"].items():
            if metric.endswith("_stderr"):
                continue
            out.append({"arm": res["arm"], "method": res["method"], "seed": res["seed"], "task": task,
                        "metric": metric, "value": value, "stderr": rec["metrics"].get(f"{metric}_stderr"),
                        "n": rec["n"], "num_fewshot": rec["num_fewshot"], "limit": res["lm_eval"]["limit"],
                        "version": rec["version"],
                        "higher_is_better": rec["higher_is_better"].get(metric.split(",")[0])})
    return out


def table(paths: list[str], base: str | None = None) -> pd.DataFrame:
    """The tidy table of ``paths`` (``utility.json`` files), sorted by arm, seed, task and metric; a
    failed utility job's stub (mmie/failures.py) is left out and named in the log."""
    from mmie.failures import real

    found, lost = real(list(paths))
    if lost:
        log.warning("utility: %d utility job(s) failed and are left out: %s", len(lost),
                    ", ".join(f"{f['rule']} {f['wildcards']}" for f in lost))
    df = pd.DataFrame([r for p in found for r in rows(p)], columns=COLUMNS[:-3])
    df["value"] = df["value"].astype(float)
    df["stderr"] = df["stderr"].astype(float)
    if base is not None and (df["arm"] == base).any():
        b = df[df["arm"] == base]
        same_seed = b.set_index(["seed", "task", "metric"])["value"]
        mean = b.groupby(["task", "metric"])["value"].mean()
        df["base_value"] = [same_seed.get((s, t, m), mean.get((t, m))) for s, t, m in
                            zip(df["seed"], df["task"], df["metric"], strict=True)]
        df["base_value"] = df["base_value"].astype(float)
        df["ratio_to_base"] = df["value"] / df["base_value"].where(df["base_value"] != 0)
        df["delta_to_base"] = df["value"] - df["base_value"]
    else:
        df["base_value"] = df["ratio_to_base"] = df["delta_to_base"] = float("nan")
    return df[COLUMNS].sort_values(["arm", "seed", "task", "metric"], kind="stable").reset_index(drop=True)
