"""Job functions of rules/report.smk: aggregate, stats, plots, samples.
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmie import io, provenance
from mmie.jobs import EVAL_SETS, JobConfig, job

log = logging.getLogger(__name__)


@job("stats", "gates", "arms", "experiment", "seeds", "generation.do_sample", "robustness.gate", "utility.tasks",
     *EVAL_SETS)
def stats(config: JobConfig, metric_paths: list[str], intervals_out: str, headline_out: str, gates_out: str,
          decisions_out: str, results_out: str, headline_tex_out: str, selection: str | None = None,
          lid_report: str | None = None, tuning: list[str] | None = None,
          features: list[str] | None = None, robustness: str | None = None, utility: list[str] | None = None) -> None:
    """Intervals, gates, decisions and the results page; ``selection``: the layer-selection artifact,
    whose choice and stability the page reports (an unstable choice is flagged there and in
    decisions.json's ``_choices``); ``tuning``: the tuned arms' tune files (rule tune), whose grids
    and choices the page reports (and ``_choices.tuning``); ``features``: each selected layer's features
    file, whose number of latents (requested, used, what limited it) the page explains and ``_choices``
    records; ``robustness``: the robustness readings (rule robustness), a section of the page;
    ``utility``: every (arm, seed)'s ``utility.json`` (rule utility), whose per-document lm-eval scores
    are sets ``utility:<task>`` of the intervals and the gates (``mmie.report.utility.records``)."""
    import pandas as pd

    from mmie import failures
    from mmie.config import (
        arm_seeds,
        gates_not_configured,
        is_seeded,
        oracle_arm,
        set_names,
        unevaluated_reason,
        utility_sets,
    )
    from mmie.report import results_page
    from mmie.stats import gates as G

    t0 = time.time()
    metric_paths, failed = failures.split(list(metric_paths))
    res = G.Results(metric_paths)
    res.failed = {(r["arm"], r["seed"]): r for r in failed}
    sets = set_names(config)
    scored = sets + (utility_sets(config) if utility else [])
    if utility:
        add_utility(res, list(utility), utility_sets(config))
    # a failed (arm, seed) is left out: the arm's intervals and gates use its other seeds; an arm with no
    # finished seed gets no estimates and the decision FAILED (a reference arm's failure shows in the
    # reasons of the gates that need it)
    configured = {a: arm_seeds(config, a) for a in config["arms"]}
    grid = {a: [s for s in ss if (a, s) not in res.failed] or ss for a, ss in configured.items()}
    failed_arms = [a for a, ss in configured.items() if all((a, s) in res.failed for s in ss)]
    arms = [a for a in config["arms"] if a not in failed_arms]
    seeded = {a: is_seeded(config, a) for a in config["arms"]}
    cfg = config["stats"]
    iv = pd.DataFrame(G.intervals(res, arms, scored, grid, cfg, seeded=seeded),
                      columns=["arm", "set", "metric", *G.INTERVAL_COLUMNS, "n_seeds", "seeded", "n_prompts"])
    # every configured gate gets a row: one on a set this run does not evaluate fails as "not evaluated",
    # except a default gate on a set the study does not configure ("not configured", not in the decision)
    gate_specs = G.expand_gates(config["gates"], list(config["languages"]["neighbours"]))
    reasons = {g["set"]: unevaluated_reason(config, g["set"]) for g in gate_specs if g["set"] not in scored}
    rows, decisions = G.decide(res, arms, gate_specs, grid, cfg, sets=scored, set_reasons=reasons, seeded=seeded,
                               oracle=oracle_arm(config), not_configured=gates_not_configured(config))
    readings = pd.read_csv(robustness) if robustness else None
    if readings is not None and config["robustness"]["gate"]:
        from mmie.report.robustness import apply_gate

        apply_gate(readings, decisions, rows)
    for arm in [a for a in config["arms"] if a in decisions or a in failed_arms]:
        lost = [r for r in failed if r["arm"] == arm]
        if arm in failed_arms and arm != "base":
            decisions[arm] = {"decision": "FAILED", "failing": [], "reasons": {}, "verdicts": {}, "n_seeds": 0,
                              "seeded": seeded[arm], "failed_runs": lost}
        elif lost and arm in decisions:
            decisions[arm]["failed_runs"] = lost
    columns = ["arm", "gate", "metric", "set", "value", "threshold", "ci_low", "ci_high", "p_adjusted", "passed",
               "reason", "verdict", "direction", "relative", "factor", "floor", "reference", "base", "margin",
               "ci_level", "gate_alpha", "p_value", "correction", "n_seeds", "seeded", "base_n_seeds", "n_prompts"]
    gates = pd.DataFrame(rows, columns=columns)
    io.write_csv(intervals_out, iv)
    measurable = G.measurability(res, grid, cfg, sets)
    table = results_page.headline(iv, arms, sets, measurable)
    io.write_csv(headline_out, table)
    io.write_text(headline_tex_out, results_page.latex(
        table, f"{config['experiment']}: estimate [{cfg['level']:.0%} interval] per arm "
               f"(seeds {config['seeds']}; seed-independent arms ran once)."))
    io.write_csv(gates_out, gates)
    chosen = io.read_json(selection) if selection else None
    choices = {"layers": {k: chosen.get(k) for k in ("layers", "forced", "frequency", "margin", "tie", "stable",
                                                      "stability_floor")}} if chosen else {}
    tuned = [io.read_json(p) for p in failures.real(list(tuning or []))[0]]   # a failed tune job: its arm FAILED
    if tuned:
        choices["tuning"] = {t["arm"]: {"lr": t["chosen"]["lr"], "retain_scale": t["chosen"]["retain_scale"],
                                        "settings": t["chosen"]["settings"], "seed": t["seed"], "rule": t["rule"]}
                             for t in tuned}
    feats = [io.read_json(p) for p in failures.real(list(features or []))[0]]   # a failed layer: no gate there
    if feats:
        choices["n_features"] = {str(f["layer"]): f.get("n_features") for f in feats}
    quality = G.forget_quality(res, arms, grid, oracle_arm(config))
    io.write_json(decisions_out, {**decisions, "_choices": choices, "_measurable": measurable,
                                  "_forget_quality": quality,
                                  "_provenance": provenance.build(
        config, rule="stats", inputs=list(metric_paths) + ([selection] if selection else []) + list(tuning or []))})
    io.write_text(results_out, results_page.page(iv, gates, decisions, arms, sets, config, chosen, measurable,
                                                 io.read_json(lid_report) if lid_report else None, quality, tuned,
                                                 failed=failed, features=feats,
                                                 robustness=readings))
    log.info("statistics for %d arms in %.1f s", len(arms), time.time() - t0)


def add_utility(res, paths: list[str], sets: list[str]) -> None:
    """The utility jobs' lm-eval scores as records of ``res`` (``mmie.report.utility.records``); a failed
    job's (arm, seed) has no record in ``sets`` (the utility sets), and a gate or interval that needs it
    names the failure."""
    from mmie import failures
    from mmie.report.utility import records

    for path in paths:
        info = failures.stub_of(path)
        if info is None:
            for rec in records(path):
                res.add(rec)
            continue
        origin = info.get("blocked_by") or info
        arm, seed = Path(path).parents[1].name, int(Path(path).parent.name.removeprefix("seed"))
        for set_name in sets:
            res.unavailable[(arm, set_name, seed)] = (f"{arm} seed {seed}: its utility job failed ({origin['rule']}: "
                                                      f"{origin['error'][:200]})")


@job("experiment", "seeds")
def samples(config: JobConfig, generations: list[str], out: str, n: int) -> None:
    """The report's side-by-side sample generations (``results_page.samples_html``)."""
    from mmie.failures import real
    from mmie.report import results_page

    by = {}
    generations, lost = real(list(generations))
    for r in lost:
        log.error("no samples of %s %s: it failed (%s)", r["rule"], r["wildcards"], r["error"][:200])
    for path in generations:
        p = Path(path)
        by[(p.parents[2].name, p.parent.name)] = io.read_jsonl(p)   # <arm>/seed<k>/<set>/generations.jsonl
    io.write_text(out, results_page.samples_html(config, by, n))


@job("arms", "experiment", *EVAL_SETS)
def aggregate(config: JobConfig, metric_paths: list[str], long_out: str, summary_out: str, md_out: str,
              failures_out: str, agreement_out: str | None = None, failed_jobs_out: str | None = None) -> None:
    """The tables over every finished (arm, seed); a failed one (mmie.failures) is a row of
    ``failed_jobs_out`` and of the Markdown summary instead."""
    import pandas as pd

    from mmie import failures
    from mmie.config import set_names
    from mmie.report.aggregate import collect, judge_agreement, markdown, summarize, wide

    metric_paths, failed = failures.split(list(metric_paths))
    failed_jobs = pd.DataFrame(failed, columns=failures.FAILED_COLUMNS)
    if failed:
        log.error("%d (arm, seed) runs failed and are left out: %s", len(failed),
                  "; ".join(f"{r['arm']} seed {r['seed']}: {r['rule']} {r['error'][:120]}" for r in failed))
    if failed_jobs_out:
        io.write_csv(failed_jobs_out, failed_jobs)
    if failed and not metric_paths:
        raise ValueError(f"no metrics to aggregate: every (arm, seed) failed ({len(failed)} failed runs; see their logs)")
    long, fails = collect(list(metric_paths))
    if long.empty:
        raise ValueError("no metrics to aggregate: every metrics.json is empty")
    summary = summarize(long, list(config["arms"]), set_names(config))
    io.write_csv(long_out, long)
    io.write_csv(summary_out, wide(summary))
    io.write_csv(failures_out, fails)
    io.write_text(md_out, markdown(summary, fails, config["experiment"], failed_jobs))
    if agreement_out:
        io.write_csv(agreement_out, judge_agreement(list(metric_paths)))
    log.info("aggregated %d rows from %d jobs; %d recorded failures", len(long), len(metric_paths), len(fails))


@job("arms", *EVAL_SETS)
def plots(config: JobConfig, inputs: dict, outputs: dict) -> None:
    """The figures of the plots rule, one per named output (each PDF copy is written beside its PNG
    by ``mmie.io.save_figure``: the ``pdf`` output is not a figure of its own)."""
    for name, path in outputs.items():
        if name != "pdf":
            plot(name, config, inputs, path)


@job()
def plot_demo_training(config: JobConfig, model_report: str, out: str) -> None:
    plot("demo_training", config, {"model_report": model_report}, out)


@job()
def plot_training_curves(config: JobConfig, checkpoints: list[str], out: str) -> None:
    plot("training_curves", config, {"checkpoints": list(checkpoints)}, out)


def plot(name: str, config: JobConfig, inputs: dict, out: str) -> None:
    import matplotlib.pyplot as plt

    from mmie.report.plots import REGISTRY

    fig = REGISTRY[name](config, inputs)
    io.save_figure(out, fig)
    plt.close(fig)


@job("model", "experiment")
def export_checkpoints(config: JobConfig, checkpoints: list[str], headline: str, decisions: str, metrics_long: str,
                       out_dir: str) -> None:
    """Each trained checkpoint as a folder to share (``export/<arm>/seed<k>/``): its files (hard links
    where the file system allows, else copies) and a model card that adds what the study measured of it
    (decision, headline estimates, the seed's own values) to the training card. A checkpoint whose
    training failed is listed in ``export/export.json`` and left out."""
    import os
    import shutil

    import pandas as pd

    from mmie import failures
    from mmie.report import model_card

    rows = {r["arm"]: r for r in pd.read_csv(headline, dtype=str, keep_default_na=False).to_dict("records")}
    decided = io.read_json(decisions)
    long = pd.read_csv(metrics_long)
    out = Path(out_dir)
    exported, skipped = [], []
    with io.atomic_dir(out) as tmp:
        for folder in map(Path, checkpoints):
            arm, seed = folder.parent.name, int(folder.name.removeprefix("seed"))
            if (folder / failures.DIR_MARKER).is_file():
                skipped.append({"arm": arm, "seed": seed, "reason": "training failed", "checkpoint": str(folder)})
                continue
            dest = tmp / arm / folder.name
            dest.mkdir(parents=True)
            for f in sorted(folder.iterdir()):
                if f.is_file() and f.name != "README.md" and not f.name.startswith("."):   # not Snakemake's marker
                    try:
                        os.link(f, dest / f.name)
                    except OSError:
                        shutil.copy2(f, dest / f.name)
            manifest = io.read_json(folder / "manifest.json")
            mine = long[(long["arm"] == arm) & (long["seed"] == seed)]
            values = {f"{r.set}:{r.metric}": float(r.value) for r in mine.itertuples()}
            card = model_card.render(manifest, config["model"], peft=(folder / "adapter_config.json").is_file())
            io.write_text(dest / "README.md", card + "\n" + model_card.evaluation_section(
                arm, seed, decided.get(arm), rows.get(arm), values))
            exported.append({"arm": arm, "seed": seed, "folder": str(dest.relative_to(tmp)), "checkpoint": str(folder)})
        io.write_json(tmp / "export.json", {
            "exported": exported, "left_out": skipped,
            "provenance": provenance.build(config, rule="export_checkpoints",
                                           inputs=[headline, decisions, metrics_long])})
    log.info("exported %d checkpoints to %s (%d left out: training failed)", len(exported), out, len(skipped))


@job("tracking", "experiment", "arms")
def track(config: JobConfig, metric_paths: list[str], checkpoints: list[str], decisions: str, gates: str,
          out: str, wandb_dir: str, mlflow_store: str) -> None:
    """One tracked run per (arm, seed) in the configured backend (``mmie.report.tracking``), and the
    marker ``out``: the backend, where it logged (folder or URI), each run's id, path and what it holds,
    the (arm, seed) runs not tracked because they failed, provenance. ``wandb_dir`` / ``mlflow_store``:
    the rule's default places (``tracking.wandb.dir`` / ``tracking.mlflow.uri`` override them)."""
    from mmie.errors import ConfigError
    from mmie.report import tracking

    t0 = time.time()
    cfg = config["tracking"]
    backend = cfg["backend"]
    if backend not in tracking.BACKENDS:
        raise ConfigError(f"tracking.backend is {backend!r}: nothing to track (set it to one of "
                          f"{list(tracking.BACKENDS)} to run the track job)")
    project = cfg.get("project") or config["experiment"]
    runs, failed = tracking.collect(list(metric_paths), list(checkpoints), decisions, gates, config["arms"],
                                    config["experiment"])
    if not runs:
        raise ValueError(f"nothing to track: every (arm, seed) failed ({len(failed)} failed runs)")
    if backend == "wandb":
        wb = cfg.get("wandb") or {}
        mode = wb.get("mode") or "offline"
        where = {"mode": mode, "dir": str(Path(wb.get("dir") or wandb_dir).resolve()), "project": project,
                 "entity": wb.get("entity")}
        logged = tracking.log_wandb(runs, project=project, directory=where["dir"], mode=mode, entity=wb.get("entity"))
    else:
        uri = tracking.mlflow_uri((cfg.get("mlflow") or {}).get("uri"), mlflow_store)
        where = {"uri": uri, "experiment": project}
        logged = tracking.log_mlflow(runs, experiment=project, uri=uri)
    for r in failed:
        log.error("not tracked: %s seed %s failed (%s)", r["arm"], r["seed"], r["error"][:200])
    sources = [s for run in runs for s in run.sources]
    io.write_json(out, {"backend": backend, **where, "runs": logged,
                        "metric_keys": sorted({k for run in runs for k in run.metrics}),
                        "curve_keys": sorted({k for run in runs for _, values in run.curve for k in values}),
                        "not_tracked": [{k: r[k] for k in ("arm", "seed", "rule", "error")} for r in failed],
                        "provenance": provenance.build(config, rule="track", inputs=[*sources, decisions, gates])})
    log.info("tracked %d runs in %s (%s) in %.1f s", len(logged), backend,
             where.get("dir") or where.get("uri"), time.time() - t0)
