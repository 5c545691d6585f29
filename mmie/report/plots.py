"""Plots for the report (docs/method.md §8). One function per plot, registered by name; each reads the
aggregated tables or reports (never the raw jobs) and writes one PNG atomically."""

from __future__ import annotations

from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mmie import io  # noqa: E402
from mmie.config import set_names  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _long(inputs: dict) -> pd.DataFrame:
    return pd.read_csv(inputs["long"])


def _bar(df: pd.DataFrame, metric: str, config: dict, ax, ylabel: str) -> None:
    sub = df[df["metric"] == metric]
    order = [s for s in set_names(config) if s in set(sub["set"])]
    sns.barplot(data=sub, x="set", y="value", hue="arm", order=order, hue_order=list(config["arms"]),
                errorbar="sd", ax=ax)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("evaluation set")
    ax.tick_params(axis="x", rotation=30)


def target_rate(config: dict, inputs: dict):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    df = _long(inputs)
    _bar(df, "target_rate", config, axes[0], "target-language rate (LID)")
    _bar(df, "es", config, axes[1], "extraction strength (LID, language-level)")
    for ax in axes:
        ax.set_ylim(0, 1)
    fig.suptitle(f"Target language ({config['languages']['target']['code']}) in outputs, mean ± sd over seeds")
    return fig


def output_language(config: dict, inputs: dict):
    df = _long(inputs)
    sub = df[df["metric"].str.startswith("lang_share_")].copy()
    sub["label"] = sub["metric"].str.removeprefix("lang_share_")
    mean = sub.groupby(["arm", "set", "label"])["value"].mean().reset_index()
    arms = list(config["arms"])
    sets = [s for s in set_names(config) if s in set(mean["set"])]
    fig, axes = plt.subplots(1, len(arms), figsize=(4.5 * len(arms) + 1, 4.2), sharey=True, squeeze=False)
    labels = sorted(mean["label"].unique())
    colors = dict(zip(labels, sns.color_palette("tab10", len(labels)), strict=True))
    for ax, arm in zip(axes[0], arms, strict=True):
        pivot = mean[mean["arm"] == arm].pivot(index="set", columns="label", values="value").reindex(sets).fillna(0)
        bottom = None
        for lab in labels:
            vals = pivot[lab] if lab in pivot else pd.Series(0.0, index=pivot.index)
            ax.bar(pivot.index, vals, bottom=bottom, color=colors[lab], label=lab)
            bottom = vals if bottom is None else bottom + vals
        ax.set_title(arm)
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].set_ylabel("share of outputs")
    axes[0][-1].legend(title="LID label", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Output language distribution per set (where does the target language go?)")
    return fig


def perplexity(config: dict, inputs: dict):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    df = _long(inputs)
    _bar(df, "ppl", config, axes[0], "perplexity of reference texts")
    _bar(df, "gen_ppl_base", config, axes[1], "perplexity of outputs under the base model")
    for ax in axes:
        ax.set_yscale("log")
    fig.suptitle("Utility, collateral damage and fluency (lower is better; log scale)")
    return fig


def lid_confusion(config: dict, inputs: dict):
    rep = io.read_json(inputs["lid"])
    check = rep["lid_check"] or rep["ensemble_on_dev"]
    matrix = pd.DataFrame(check["matrix"]).T.loc[check["labels_true"], check["labels_pred"]]
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(matrix.columns), 1 + 0.6 * len(matrix)))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true label")
    ax.set_title(f"LID on the labelled check set (accuracy {check['accuracy']:.1%}, n={check['n']})")
    return fig


def demo_training(config: dict, inputs: dict):
    rep = io.read_json(inputs["model_report"])
    hist = pd.DataFrame(rep["training"]["history"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for col in [c for c in hist.columns if c.startswith("heldout_ppl_")]:
        ax.plot(hist["step"], hist[col], marker="o", label=col.removeprefix("heldout_ppl_"))
    ax.axvline(rep["training"]["best_step"], color="grey", ls="--", label="kept (best) step")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Demo model training (early stopping on held-out perplexity)")
    return fig


def training_curves(config: dict, inputs: dict):
    """Per trained arm: forget loss, retain KL and held-out retain perplexity / forget NLL by step."""
    from mmie.failures import failure_figure, real

    frames = []
    checkpoints, lost = real(list(inputs["checkpoints"]))
    if not checkpoints:
        return failure_figure("Unlearning training curves", lost)
    for ckpt in checkpoints:
        man = io.read_json(f"{ckpt}/manifest.json")
        df = pd.read_csv(f"{ckpt}/train_log.csv")
        df["arm"], df["seed"] = man["arm"], man["seed"]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    panels = [("forget_loss", "forget loss"), ("retain_kl", "retain KL to base"),
              ("retain_ppl", "held-out retain perplexity"), ("forget_nll", "held-out forget NLL")]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for ax, (col, label) in zip(axes, panels, strict=True):
        sub = df.dropna(subset=[col])
        sns.lineplot(data=sub, x="step", y=col, hue="arm", units="seed", estimator=None, ax=ax, marker="." if
                     col in ("retain_ppl", "forget_nll") else None)
        ax.set_ylabel(label)
    fig.suptitle("Unlearning training curves (one line per seed)" + (
        f"; failed, not shown: {', '.join(sorted({r['wildcards'].get('arm', r['rule']) for r in lost}))}" if lost else ""))
    return fig


def _intervals(inputs: dict) -> pd.DataFrame:
    return pd.read_csv(inputs["intervals"])


def _ci_bars(ax, iv: pd.DataFrame, metric: str, config: dict, ylabel: str) -> None:
    sub = iv[iv.metric == metric]
    arms = [a for a in config["arms"] if a in set(sub.arm)]
    sets = [s for s in set_names(config) if s in set(sub.set)]
    width = 0.8 / max(1, len(arms))
    palette = sns.color_palette("tab10", len(arms))
    for i, arm in enumerate(arms):
        rows = sub[sub.arm == arm].set_index("set").reindex(sets)
        x = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(sets))]
        err = [rows.estimate - rows.ci_low, rows.ci_high - rows.estimate]
        ax.bar(x, rows.estimate, width=width, yerr=err, capsize=2, color=palette[i], label=arm)
    ax.set_xticks(range(len(sets)), sets, rotation=30)
    ax.set_ylabel(ylabel)
    ax.legend(title="arm", fontsize="small")


def es_ci(config: dict, inputs: dict):
    iv = _intervals(inputs)
    fig, axes = plt.subplots(2, 1, figsize=(12, 8))
    _ci_bars(axes[0], iv, "es", config, "extraction strength (ES)")
    _ci_bars(axes[1], iv, "target_rate", config, "target-language rate")
    for ax in axes:
        ax.set_ylim(0, 1.05)
    fig.suptitle("Target language by arm and set, with 95% hierarchical-bootstrap intervals")
    return fig


def tradeoff(config: dict, inputs: dict):
    iv = _intervals(inputs).set_index(["arm", "set", "metric"])
    fig, ax = plt.subplots(figsize=(7, 5))
    base_ppl = iv.loc[("base", "retain", "ppl"), "estimate"]
    for arm in config["arms"]:
        try:
            es = iv.loc[(arm, "forget", "es")]
            ppl = iv.loc[(arm, "retain", "ppl")]
        except KeyError:
            continue
        ax.errorbar(ppl.estimate / base_ppl, es.estimate,
                    xerr=[[(ppl.estimate - ppl.ci_low) / base_ppl], [(ppl.ci_high - ppl.estimate) / base_ppl]],
                    yerr=[[es.estimate - es.ci_low], [es.ci_high - es.estimate]], fmt="o", capsize=3, label=arm)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("retain perplexity / base (utility cost →)")
    ax.set_ylabel("ES on forget prompts (↓ better)")
    ax.set_title("Forgetting vs utility")
    ax.legend()
    return fig


def neighbours(config: dict, inputs: dict):
    iv = _intervals(inputs).set_index(["arm", "set", "metric"])["estimate"]
    codes = list(config["languages"]["neighbours"])
    arms = [a for a in config["arms"] if a != "base"]
    leak = pd.DataFrame(index=arms, columns=codes, dtype=float)
    own = pd.DataFrame(index=arms, columns=codes, dtype=float)
    for a in arms:
        for c in codes:
            try:
                leak.loc[a, c] = iv[(a, c, "target_rate")] - iv[("base", c, "target_rate")]
                own.loc[a, c] = iv[(a, c, "own_language_rate")] - iv[("base", c, "own_language_rate")]
            except KeyError:
                continue
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.5 * len(arms)))
    sns.heatmap(leak, annot=True, fmt=".2f", cmap="Reds", vmin=0, ax=axes[0], cbar=False)
    axes[0].set_title("leakage: Δ target rate vs base")
    sns.heatmap(own, annot=True, fmt=".2f", cmap="RdBu", center=0, ax=axes[1], cbar=False)
    axes[1].set_title("collateral: Δ own-language rate vs base")
    fig.suptitle("Neighbour languages", y=1.06)
    return fig


def mia(config: dict, inputs: dict):
    iv = _intervals(inputs)
    sub = iv[(iv.metric == "mia_auc") & (iv.set == "forget")].set_index("arm").reindex(list(config["arms"])).dropna()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(sub.index, sub.estimate, yerr=[sub.estimate - sub.ci_low, sub.ci_high - sub.estimate], capsize=3)
    ax.axhline(0.5, color="grey", ls="--", label="chance")
    ax.set_ylabel("MIA AUC (Min-K%++), forget/train vs forget/holdout")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Membership inference")
    return fig


REGISTRY: dict[str, Callable] = {"es_ci": es_ci, "tradeoff": tradeoff, "neighbours": neighbours, "mia": mia,
                                 "training_curves": training_curves, "target_rate": target_rate, "output_language": output_language,
                                 "perplexity": perplexity, "lid_confusion": lid_confusion,
                                 "demo_training": demo_training}
