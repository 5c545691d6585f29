"""The study's utility table (``summary/utility.csv``) from every (arm, seed)'s ``utility.json``
(rules/utility.smk): one row per arm, seed, task and metric, with lm-eval's own standard error and,
as information, the value relative to base at the same seed (base's mean over its seeds when base has
no run at that seed); and the statistics' view of the same files (``records``): per task, the
per-document values that the gates and intervals resample (docs/method.md, "Utility through lm-eval")."""

from __future__ import annotations

import logging
import math

import pandas as pd

from mmie import io
from mmie.config import utility_set

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


def _leaves(task: str, groups: dict[str, list[str]], items: dict, seen: tuple[str, ...] = ()) -> list[str]:
    """The scored tasks under ``task``: itself when lm-eval logged its documents, else its group's
    members, recursively (lm-eval's ``group_subtasks``)."""
    if task in items:
        return [task]
    if task in seen:
        raise ValueError(f"lm-eval group {task!r} contains itself: {' -> '.join((*seen, task))}")
    return [leaf for m in groups.get(task, []) for leaf in _leaves(m, groups, items, (*seen, task))]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def records(path: str) -> list[dict]:
    """The statistics' view of one ``utility.json`` (``mmie.stats.gates.Results`` records): one record
    per task and group of ``utility.tasks``, set ``utility:<task>``, with every metric that lm-eval
    reports as the mean over documents and the per-document values it is the mean of (``per_prompt``;
    ``id`` is ``<task>/<doc_id>``, a group's documents are all its tasks' documents, so a group's value
    is the document-weighted mean, lm-eval's ``weight_by_size`` aggregate). A metric that is not the
    mean of its per-document values (a corpus-level score such as BLEU or word perplexity, a group
    aggregated unweighted, a filtered variant ``<metric>,<filter>``) or has documents without a value
    is a recorded failure with its reason: a gate on it fails as missing, and nothing stands in for it."""
    res = io.read_json(path)
    items, groups = res["items"], res.get("groups", {})
    out = []
    for task, rec in res["tasks"].items():
        where = f"lm-eval task {task} in {path}"
        names = [m for m in rec["metrics"] if not m.endswith("_stderr")]
        leaves = _leaves(task, groups, items)
        ids = [f"{t}/{d}" for t in leaves for d in items[t]["doc_id"]]
        metrics, failures, per = {}, {}, {"id": ids}
        if not leaves or len(set(ids)) != len(ids):
            why = (f"lm-eval logged no documents of {task} (rerun its utility job)" if not leaves else
                   f"{len(ids) - len(set(ids))} documents of {task} were logged more than once (one per filter?), "
                   f"so their values cannot be paired between arms")
            failures = {m: f"{where}: {why}" for m in names}
            names = []
        for metric in names:
            value = rec["metrics"][metric]
            if "," in metric:
                failures[metric] = (f"{where}: per-document values are kept for lm-eval's unfiltered metrics only, "
                                    f"not the filtered {metric!r}")
                continue
            if not all(metric in items[t] for t in leaves):
                failures[metric] = f"{where}: lm-eval logged no per-document values of {metric}"
                continue
            vals = [v for t in leaves for v in items[t][metric]]
            if any(v is None for v in vals) or not vals:
                failures[metric] = (f"{where}: {sum(v is None for v in vals)} of {len(vals)} documents have no "
                                    f"finite {metric}")
                continue
            mean = math.fsum(vals) / len(vals)
            if value is None or not _close(mean, float(value)):
                failures[metric] = (f"{where}: lm-eval's {metric} ({value}) is not the mean of its {len(vals)} "
                                    f"per-document values ({mean:.6g}), so no per-document bootstrap can test it "
                                    f"(gate a mean metric such as acc or acc_norm)")
                continue
            metrics[metric] = mean
            per[metric] = vals
        out.append({"arm": res["arm"], "seed": int(res["seed"]), "set": utility_set(task), "metrics": metrics,
                    "failures": failures, "per_prompt": per, "forms": {m: [m, None, "identity"] for m in metrics}})
    return out
