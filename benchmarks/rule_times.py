"""Summarise a run's Snakemake benchmark files per rule: jobs, total and mean seconds, peak memory,
and the share of job time that is start-up (interpreter and imports).

    python benchmarks/rule_times.py results/demo                          # table on stdout
    python benchmarks/rule_times.py results/demo --startup --config config.yaml --markdown table.md

Every rule writes ``results/<exp>/benchmarks/<rule>[/<arm>/seed<k>|/layer<n>].tsv`` (Snakemake
``benchmark:``; ``s`` is the job's wall time, ``max_rss`` its peak resident memory in MB). With
``--startup`` each job's start-up is reported: a job that ran warm (in a fork of the warm server,
mmie/forkserver.py) wrote its start-up as paid, its CPU time and its peak memory to its log (the
benchmark file measured only the client), and those are used; for a job that started cold the
start-up is estimated as the wall time of an empty Python process that imports what the job's
script imports before its work begins (``STARTUP_IMPORTS`` and, for evaluate/train, the arm method's
library), median of ``--repeats`` runs on this machine now; the estimate leaves out model loading
and Snakemake's own per-job bookkeeping, so it is a lower bound.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from mmie.forkserver import USAGE_PATTERN

ROOT = Path(__file__).resolve().parent.parent
# what every script job imports before its work: Snakemake's preamble, the log setup, a job module
BASE = ["snakemake.script", "mmie.logs", "mmie.jobs.evaluate"]
MODEL = ["torch", "transformers.models.qwen2.modeling_qwen2", "mmie.model.loading", "mmie.model.generation", "mmie.model.likelihood"]
STARTUP_IMPORTS = {
    "prepare_data": ["mmie.data.prepare"],
    "fit_lid": ["mmie.lang.lid", "mmie.lang.translit"],
    "data_report": ["mmie.data.corpus", "mmie.model.loading", "transformers.tokenization_utils_fast"],
    "build_demo_model": MODEL + ["mmie.model.demo", "mmie.lang.lid"],
    "build_oracle_model": MODEL + ["mmie.model.demo", "mmie.lang.lid"],
    "evaluate": MODEL + ["mmie.arms"],
    "score": ["mmie.lang.lid", "mmie.stats.sets", "mmie.stats.text"],
    "judge": ["mmie.lang.judge"],
    "train": MODEL + ["mmie.arms", "mmie.arms.unlearn", "pandas"],
    "select_layers": MODEL + ["mmie.sae.layers", "mmie.lang.lid", "sklearn.linear_model", "sklearn.model_selection"],
    "cache_activations": MODEL + ["mmie.sae.activations", "mmie.sae.directions"],
    "train_sae": ["torch", "mmie.jobs.sae", "mmie.sae.autoencoder", "sae_lens"],
    "select_features": MODEL + ["mmie.jobs.sae", "mmie.sae.features", "mmie.sae.autoencoder", "sae_lens"],
    "sweep_gate": MODEL + ["mmie.arms.edit_arms", "mmie.lang.lid", "sae_lens"],
    "sae_report": ["mmie.report.sae_report"],
    "aggregate": ["mmie.report.aggregate"],
    "stats": ["mmie.stats.gates", "mmie.report.results_page", "pandas"],
    "plots": ["mmie.report.plots"],
    "plot_demo_training": ["mmie.report.plots"],
    "plot_training_curves": ["mmie.report.plots"],
    "convert_gemma": ["mmie.model.gemma"],
    # robustness attacks (rules/robustness.smk): the arm's model and build as evaluate, plus the attack
    "attack": MODEL + ["mmie.arms", "mmie.jobs.robustness", "mmie.attacks.relearn", "mmie.attacks.quantize",
                       "mmie.attacks.incontext", "mmie.attacks.probe", "mmie.lang.lid", "bitsandbytes",
                       "sklearn.linear_model"],
    "attack_seeded": MODEL + ["mmie.arms", "mmie.jobs.robustness", "mmie.attacks.relearn", "mmie.lang.lid"],
    "robustness": ["mmie.report.robustness", "mmie.report.plots"],
    # utility through lm-evaluation-harness (rules/utility.smk): the arm as evaluate, plus lm-eval
    "utility": MODEL + ["mmie.arms", "mmie.jobs.utility", "mmie.model.harness", "lm_eval",
                        "lm_eval.models.huggingface"],
    "utility_table": ["mmie.report.utility"],
}


def warm_usage(log: Path) -> tuple[float, float] | None:
    """(start-up s, peak RSS MB) from the line a warm-started job wrote to its log; None for a cold job."""
    import re

    if not log.is_file():
        return None
    found = re.findall(USAGE_PATTERN, log.read_text(encoding="utf-8", errors="replace"))
    if not found:
        return None
    startup, _cpu, rss = found[-1]   # the last run of the job (logs are appended to)
    return float(startup), float(rss)


def read_benchmarks(results: str | Path) -> pd.DataFrame:
    """One row per benchmark file: rule (its folder under benchmarks/), job (the rest of its path),
    arm (evaluate/score/train/sweep/judge jobs), seconds and peak RSS in MB, whether it ran warm and
    its start-up as measured then (the log next to it: logs/<same path>.log)."""
    root = Path(results) / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no benchmark files under {root}: is {results} a finished run's results/<experiment>?")
    rows = []
    for f in files:
        parts = f.relative_to(root).with_suffix("").parts
        df = pd.read_csv(f, sep="\t")
        if df.empty or not {"s", "max_rss"} <= set(df.columns):
            raise ValueError(f"{f}: not a Snakemake benchmark file (columns s and max_rss expected)")
        rss = pd.to_numeric(df["max_rss"].iloc[0], errors="coerce")   # "NA" when the job ended too fast
        warm = warm_usage(root.parent / "logs" / f.relative_to(root).with_suffix(".log"))
        rows.append({"rule": parts[0], "job": "/".join(parts[1:]) or parts[0],
                     "arm": parts[1] if len(parts) > 2 and parts[2].startswith("seed") else None,
                     "s": float(df["s"].iloc[0]), "max_rss_mb": float(rss) if warm is None else warm[1],
                     "warm": warm is not None, "startup_measured_s": float("nan") if warm is None else warm[0]})
    return pd.DataFrame(rows)


def rule_table(jobs: pd.DataFrame) -> pd.DataFrame:
    table = jobs.groupby("rule").agg(jobs=("s", "size"), warm=("warm", "sum"), total_s=("s", "sum"),
                                     mean_s=("s", "mean"), max_rss_mb=("max_rss_mb", "max"))
    if "startup_s" in jobs:
        table["startup_s"] = jobs.groupby("rule")["startup_s"].sum()
    return table.sort_values("total_s", ascending=False)


def job_modules(rule: str, arm: str | None, arms: dict) -> list[str]:
    """What a job imports: the rule's modules and the libraries its arm's method declares (an ``on:``
    arm adds its base arm's too)."""
    from mmie.arms.methods import methods

    mods = BASE + STARTUP_IMPORTS.get(rule, [])
    if isinstance(arm, str) and rule in ("evaluate", "train", "relearn", "quantize", "incontext", "probe") and arm in arms:
        spec = arms[arm]
        for method in (spec["method"], arms.get(spec.get("on"), {}).get("method")):
            mods = mods + (list(methods()[method].imports) if method else [])
    return list(dict.fromkeys(mods))


def import_seconds(modules: list[str], repeats: int = 3) -> float:
    """Median wall time of a fresh ``python -c 'import ...'`` (interpreter start included)."""
    code = "import " + ", ".join(modules)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise RuntimeError(f"start-up probe `{code}` failed: {res.stderr[-1000:]}")
    return statistics.median(times)


def add_startup(jobs: pd.DataFrame, arms: dict, repeats: int = 3) -> tuple[pd.DataFrame, dict[str, float]]:
    """Each job's start-up: as measured for a warm job, else estimated (one probe per distinct module list)."""
    cold = ~jobs["warm"]
    keys = [tuple(job_modules(r, a, arms)) for r, a in zip(jobs["rule"][cold], jobs["arm"][cold], strict=True)]
    probes = {k: import_seconds(list(k), repeats) for k in dict.fromkeys(keys)}
    startup = jobs["startup_measured_s"].copy()
    startup[cold] = [probes[k] for k in keys]
    return jobs.assign(startup_s=startup), {" ".join(k): v for k, v in probes.items()}


def run_commit(results: str | Path) -> str | None:
    """The commit that produced the run, from an evaluate manifest's provenance (None if there is none)."""
    import json

    for f in sorted(Path(results).glob("*/seed*/evaluate.json")):
        git = json.loads(f.read_text(encoding="utf-8")).get("provenance", {}).get("git", {})
        if git.get("commit"):
            return git["commit"][:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    return None


def git_commit() -> str:
    """The checkout's commit (when the run records none)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({type(err).__name__})"
    return out + (" (uncommitted changes)" if dirty else "")


def summary(jobs: pd.DataFrame) -> dict:
    out = {"jobs": len(jobs), "warm_jobs": int(jobs["warm"].sum()), "job_seconds": float(jobs["s"].sum())}
    if "startup_s" in jobs:
        out["startup_seconds"] = float(jobs["startup_s"].sum())
        out["startup_share"] = out["startup_seconds"] / out["job_seconds"]
    return out


def markdown(jobs: pd.DataFrame, results: str, commit: str, note: str = "") -> str:
    table, s = rule_table(jobs), summary(jobs)
    start = "startup_s" in jobs
    head = "| rule | jobs | warm | total s | mean s | peak RSS MB |" + (" start-up s |" if start else "")
    lines = [f"### Job times per rule: `{results}` (commit {commit})", ""]
    if note:
        lines += [note, ""]
    lines += [head, "|---|---:|---:|---:|---:|---:|" + ("---:|" if start else "")]
    for rule, r in table.iterrows():
        rss = "n/a" if pd.isna(r["max_rss_mb"]) else f"{r['max_rss_mb']:.0f}"
        lines.append(f"| {rule} | {int(r['jobs'])} | {int(r['warm'])} | {r['total_s']:.1f} | {r['mean_s']:.2f} | {rss} |"
                     + (f" {r['startup_s']:.1f} |" if start else ""))
    total = f"| **all** | **{s['jobs']}** | **{s['warm_jobs']}** | **{s['job_seconds']:.1f}** | | |"
    lines += [total + (f" **{s['startup_seconds']:.1f}** |" if start else ""), ""]
    if start:
        lines.append(f"Start-up is {100 * s['startup_share']:.0f}% of the {s['job_seconds']:.0f} s of job time: "
                     "as paid for the warm jobs (from the process's start to the script's first statement in "
                     "the warm server's fork), estimated for the others (an empty process importing what the "
                     "job imports).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default="results/demo", help="results/<experiment> of a finished run")
    ap.add_argument("--startup", action="store_true", help="estimate each job's start-up (runs import probes)")
    ap.add_argument("--config", default=str(ROOT / "config.yaml"), help="the run's config (arm methods)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", help="write the table as Markdown to this file (or into its "
                    "'<!-- BEGIN generated: rule-times -->' block when it has one)")
    ap.add_argument("--note", default="", help="a line under the Markdown heading (machine, run wall time)")
    args = ap.parse_args(argv)
    jobs = read_benchmarks(args.results)
    if args.startup:
        import yaml

        arms = (yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}).get("arms", {})
        jobs, probes = add_startup(jobs, arms, args.repeats)
        for mods, secs in sorted(probes.items(), key=lambda kv: kv[1]):
            print(f"start-up probe {secs:6.2f} s: import {mods}", file=sys.stderr)
    print(rule_table(jobs).round(2).to_string())
    print(summary(jobs))
    if args.markdown:
        commit = run_commit(args.results) or f"{git_commit()}, the checkout: the run records none"
        text = markdown(jobs, args.results, commit, args.note)
        target = Path(args.markdown)
        if target.is_file() and "<!-- BEGIN generated: rule-times -->" in target.read_text(encoding="utf-8"):
            from mmie.report.demo_results import fill_block

            fill_block(target, "rule-times", text)   # a docs page: only its generated block
        else:
            target.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
