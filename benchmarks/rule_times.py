"""Summarise Snakemake benchmark files per rule: jobs, total and mean seconds, max RSS.

Usage: python benchmarks/rule_times.py results/demo
"""

import sys
from pathlib import Path

import pandas as pd


def main(results: str) -> None:
    rows = []
    root = Path(results) / "benchmarks"
    for f in sorted(root.rglob("*.tsv")):
        rule = f.relative_to(root).parts[0].removesuffix(".tsv")
        df = pd.read_csv(f, sep="\t")
        rows.append({"rule": rule, "s": float(df["s"].iloc[0]), "max_rss_mb": float(df["max_rss"].iloc[0])})
    table = pd.DataFrame(rows).groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"),
                                                   max_rss_mb=("max_rss_mb", "max"))
    print(table.sort_values("total_s", ascending=False).round(2).to_string())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/demo")
