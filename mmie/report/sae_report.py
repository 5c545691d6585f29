"""Report part for layers and SAEs (docs/method.md §7): the SAE quality table, the chosen features, and
three plots — per-layer selection scores, SAE quality per layer, and the gate's dose-response
(target rate and retain perplexity vs α, SAE features vs as many random features)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mmie import io  # noqa: E402

QUALITY_COLUMNS = ["layer", "fvu", "l0", "dead_share", "ce_clean", "ce_sae", "ce_zero", "loss_recovered"]


def quality_table(paths: list[str]) -> pd.DataFrame:
    rows = []
    for p in paths:
        q = io.read_json(p)
        rows.append({c: q[c] for c in QUALITY_COLUMNS})
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS).sort_values("layer")


def features_table(paths: list[str]) -> pd.DataFrame:
    rows = []
    for p in paths:
        f = io.read_json(p)
        n = f.get("n_features") or {}   # requested vs used (mmie.sae.features.derive_n_features)
        counts = {"n_features_requested": n.get("requested"), "n_features_used": n.get("used"),
                  "n_features_limited_by": n.get("limited_by")}
        for rank, feat in enumerate(f["features"]):
            rows.append({"layer": f["layer"], "method": f["method"], "rank": rank, **counts,
                         **{k: v for k, v in feat.items() if isinstance(v, (int, float, str))}})
    return pd.DataFrame(rows)


def sweep_table(paths: list[str]) -> pd.DataFrame:
    rows = []
    for p in paths:
        s = io.read_json(p)
        for r in s["rows"]:
            rows.append({"arm": s["arm"], "seed": s["seed"], "method": r["method"], "alpha": r["alpha"],
                         "target_rate": r["target_rate"], "retain_ppl": r["retain_ppl"]})
    return pd.DataFrame(rows, columns=["arm", "seed", "method", "alpha", "target_rate", "retain_ppl"])


def plot_selection(selection: dict):
    fig, ax = plt.subplots(figsize=(7, 3.8))
    if selection["forced"]:
        ax.text(0.5, 0.5, f"layers forced by config (layers.force_layers): {selection['layers']}\n"
                          "no selection scores were computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    rows = [{"resample": i, "layer": int(ly), **{k: row[k] for k in ("separability", "causal", "score")}}
            for i, per in enumerate(selection["resamples"]) for ly, row in per.items()]
    df = pd.DataFrame(rows)
    agg = df.groupby("layer")[["separability", "causal", "score"]].agg(["mean", "std"]).fillna(0.0)
    layers = list(agg.index)
    width = 0.27
    for i, key in enumerate(("separability", "causal", "score")):
        ax.bar([x + (i - 1) * width for x in range(len(layers))], agg[(key, "mean")], width,
               yerr=agg[(key, "std")], label=key, capsize=2)
    for x, ly in enumerate(layers):
        mark = " ★" if ly in selection["layers"] else ""
        ax.annotate(f"chosen in {selection['frequency'][str(ly)]:.0%}{mark}", (x, 1.02), ha="center", fontsize=8,
                    xycoords=("data", "axes fraction"))
    ax.set_xticks(range(len(layers)), [str(ly) for ly in layers])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("score (mean ± sd over resamples)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _blank(fig, axes, message: str):
    """A figure that says why it has nothing to show (the report always gets the file)."""
    for ax in axes:
        ax.set_axis_off()
    axes[0].text(0, 0.5, message, transform=axes[0].transAxes)
    return fig


def plot_quality(table: pd.DataFrame):
    fig, axes = plt.subplots(1, 4, figsize=(10, 3))
    if table.empty:
        return _blank(fig, axes, "no SAE arms in this experiment")
    for ax, (col, label) in zip(axes, [("fvu", "variance unexplained"), ("l0", "L0"),
                                       ("dead_share", "dead latents"), ("loss_recovered", "loss recovered")],
                                strict=True):
        ax.bar(table["layer"].astype(str), table[col])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("layer")
    fig.tight_layout()
    return fig


def plot_sweep(df: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    if df.empty:
        return _blank(fig, axes, "no sae_gate arm: no dose-response sweep")
    for ax, col, label in ((axes[0], "target_rate", "target rate on forget prompts"),
                           (axes[1], "retain_ppl", "retain perplexity")):
        for (arm, method), sub in df.groupby(["arm", "method"]):
            mean = sub.groupby("alpha")[col].mean()
            ax.plot(mean.index, mean.values, marker="o", label=f"{arm}: {method}")
            ax.scatter(sub["alpha"], sub[col], s=8, alpha=0.4)
        ax.set_xlabel("gate strength α")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
