"""Optional run tracking (``tracking.backend``): one tracked run per (arm, seed) in Weights & Biases
(offline by default) or MLflow (a local file store by default), built from a finished run's files.

Nothing here runs a model or recomputes a number: each tracked run holds what the outputs already say
(docs/running.md, "Tracking runs"):

- params (W&B: the run config) and tags: experiment, arm, seed, method, commit and config hash (from
  the outputs' provenance) and the arm's settings, defaults filled in (``arm.<key>``, nested keys
  joined by dots);
- the training curve of a trained arm: every ``train_log.csv`` row as one step (``train/<column>``);
- every per-set metric of ``metrics.json`` as ``<set>/<metric>`` (e.g. ``forget/target_rate``);
- the arm's decision and its gates from the summary: ``gate/<gate>/passed`` (1/0) as a metric and
  ``decision`` and ``gate/<gate>/verdict`` as labels (MLflow tags; W&B summary values). A gate such as
  ``neighbour_ppl[bn]`` is keyed ``gate/neighbour_ppl.bn/…`` (MLflow keys allow no brackets).

A backend that fails is an error naming the backend, the run and the reason (``TrackingError``): a
tracking job never skips silently. The backends are imported only when used."""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mmie import io
from mmie.environment import temporary
from mmie.errors import TrackingError

BACKENDS = ("wandb", "mlflow")
#: W&B's limit on one tag's length
WANDB_TAG_MAX = 64


@dataclass
class TrackedRun:
    """Everything one (arm, seed) run logs, backend-independent."""

    arm: str
    seed: int
    method: str
    config_hash: str
    commit: str
    params: dict[str, str | int | float | bool] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)   # metrics without a finite value (not logged)
    sources: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.arm}-seed{self.seed}"


def safe_key(name: str) -> str:
    """A metric, param or tag key both backends accept: ``neighbour_ppl[bn]`` -> ``neighbour_ppl.bn``,
    any other character outside [A-Za-z0-9_-./ ] -> ``_``."""
    name = re.sub(r"\[([^\]]*)\]", r".\1", name)
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def flatten(prefix: str, value) -> dict:
    """Nested settings as ``prefix.key.sub`` -> scalar (lists and ``None`` as their JSON text)."""
    import json

    if isinstance(value, Mapping):
        out: dict = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    if isinstance(value, (str, int, float, bool)):
        return {prefix: value}
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_curve(train_log: str | Path) -> list[tuple[int, dict[str, float]]]:
    """``train_log.csv`` as (step, {``train/<column>``: value}) in file order; empty cells are left out."""
    rows = []
    with open(train_log, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            values = {f"train/{safe_key(k)}": float(v) for k, v in row.items() if v not in ("", None)}
            values = {k: v for k, v in values.items() if math.isfinite(v)}
            if values:
                rows.append((step, values))
    return rows


def _unit(path: Path) -> tuple[str, int]:
    """(arm, seed) of ``<arm>/seed<k>/<set>/metrics.json``."""
    return path.parents[2].name, int(path.parents[1].name.removeprefix("seed"))


def collect(metric_paths: list[str], checkpoints: list[str], decisions: str, gates: str, arms: Mapping,
            experiment: str) -> tuple[list[TrackedRun], list[dict]]:
    """The tracked runs of a finished study, one per (arm, seed) with metrics, and the (arm, seed)
    units that failed (``mmie.failures``: not tracked, listed in the marker). ``arms``: the config's
    arms; ``checkpoints``: every trained arm's ``checkpoints/<arm>/seed<k>`` folder."""
    from mmie import failures
    from mmie.arms import resolve_spec

    ok, failed = failures.split(list(metric_paths))
    by_unit: dict[tuple[str, int], list[Path]] = {}
    for p in ok:
        by_unit.setdefault(_unit(Path(p)), []).append(Path(p))
    curves = {(Path(c).parent.name, int(Path(c).name.removeprefix("seed"))): Path(c) for c in checkpoints}
    decided = io.read_json(decisions)
    with open(gates, newline="") as f:
        gate_rows = list(csv.DictReader(f))
    runs = []
    for (arm, seed), paths in by_unit.items():
        spec = resolve_spec(dict(arms[arm]))
        hashes, commits, metrics, skipped = set(), set(), {}, []
        for path in sorted(paths):
            data = io.read_json(path)
            prov = data.get("provenance") or {}
            hashes.add(str(prov.get("config_hash")))
            commits.add(str((prov.get("git") or {}).get("commit")))
            for name, value in (data.get("metrics") or {}).items():
                key = f"{safe_key(data.get('set') or path.parent.name)}/{safe_key(name)}"
                number = _number(value)
                if number is None:
                    skipped.append(key)
                else:
                    metrics[key] = number
        run = TrackedRun(arm=arm, seed=seed, method=str(spec["method"]), config_hash="+".join(sorted(hashes)),
                         commit="+".join(sorted(commits)), metrics=metrics, skipped=skipped,
                         sources=[str(p) for p in sorted(paths)])
        checkpoint = curves.get((arm, seed))
        if checkpoint is not None and (checkpoint / "train_log.csv").exists():
            run.curve = read_curve(checkpoint / "train_log.csv")
            run.sources.append(str(checkpoint / "train_log.csv"))
        decision = (decided.get(arm) or {}).get("decision")
        if decision is not None:
            run.labels["decision"] = str(decision)
        for row in gate_rows:
            if row["arm"] == arm:
                key = f"gate/{safe_key(row['gate'])}"
                run.metrics[f"{key}/passed"] = 1.0 if row["passed"] == "True" else 0.0
                run.labels[f"{key}/verdict"] = row.get("verdict") or ""
        run.tags = {"experiment": experiment, "arm": arm, "seed": str(seed), "method": run.method,
                    "commit": run.commit, "config_hash": run.config_hash,
                    **({"decision": run.labels["decision"]} if "decision" in run.labels else {})}
        run.params = {"experiment": experiment, "arm": arm, "seed": seed, "method": run.method,
                      "commit": run.commit, "config_hash": run.config_hash,
                      **{safe_key(k): v for k, v in flatten("arm", spec).items()}}
        runs.append(run)
    runs.sort(key=lambda r: (list(arms).index(r.arm) if r.arm in arms else len(arms), r.seed))
    return runs, failed


# ----------------------------------------------------------------------------- W&B
def wandb_environment(directory: Path, mode: str) -> dict[str, str | None]:
    """The environment of a W&B session: the mode, no git or code capture, no console capture, and
    offline every W&B folder (cache, config, data, artifacts) under ``directory``, so nothing is written
    outside it; online, the user's own settings (login) are left alone."""
    env: dict[str, str | None] = {"WANDB_MODE": mode, "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                                  "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off", "WANDB_DIR": str(directory)}
    if mode == "offline":
        private = directory / "_wandb_env"   # not ".wandb": W&B would put its runs there
        env.update(WANDB_CACHE_DIR=str(private / "cache"), WANDB_CONFIG_DIR=str(private / "config"),
                   WANDB_DATA_DIR=str(private / "data"), WANDB_ARTIFACT_DIR=str(private / "artifacts"))
    return env


def log_wandb(runs: list[TrackedRun], *, project: str, directory: str | Path, mode: str = "offline",
              entity: str | None = None) -> list[dict]:
    """One W&B run per (arm, seed) under ``directory`` (``<directory>/wandb/offline-run-…`` offline);
    the params as the run config, the tags as ``key:value`` tags, the curve as history steps, the
    metrics and labels in the run summary. Returns what was logged where."""
    if mode not in ("offline", "online"):
        raise TrackingError(f"tracking.wandb.mode must be offline or online, not {mode!r}")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    with temporary(**wandb_environment(directory, mode)):
        try:
            import wandb
        except ImportError as exc:
            raise TrackingError(f"tracking.backend wandb: wandb cannot be imported ({exc}); install requirements.txt") from exc
        settings = wandb.Settings(mode="online" if mode == "online" else "offline",   # checked above
                                  disable_git=True, save_code=False, console="off", silent=True,
                                  x_disable_stats=True, x_disable_machine_info=True)
        for run in runs:
            try:
                handle = wandb.init(project=project, entity=entity, name=run.name, group=run.arm, job_type="evaluation",
                                    dir=str(directory), config=dict(run.params), settings=settings,
                                    tags=[f"{k}:{v}"[:WANDB_TAG_MAX] for k, v in run.tags.items()], reinit="create_new")
                try:
                    for step, values in run.curve:
                        handle.log(values, step=step)
                    for key, value in {**run.metrics, **run.labels}.items():
                        handle.summary[key] = value
                    where = str(Path(handle.settings.sync_dir))
                    run_id = handle.id
                    url = None if mode == "offline" else handle.url
                finally:
                    handle.finish()
            except Exception as exc:   # noqa: BLE001 -- re-raised with the backend, run and reason
                raise TrackingError(f"tracking.backend wandb ({mode}): could not log {run.name} to {directory}: "
                                    f"{type(exc).__name__}: {exc}") from exc
            out.append({**summary_of(run), "run_id": run_id, "path": where, **({"url": url} if url else {})})
    return out


# ----------------------------------------------------------------------------- MLflow
def mlflow_uri(configured: str | None, default_store: str | Path) -> str:
    """The tracking URI: the configured one as it is when it has a scheme (``http://``, ``file://``,
    ``databricks``…), a configured folder or the default store as a ``file://`` URI."""
    if configured and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", configured) and not re.match(r"^[A-Za-z]:[\\/]", configured):
        return configured
    return Path(configured or default_store).resolve().as_uri()


def log_mlflow(runs: list[TrackedRun], *, experiment: str, uri: str) -> list[dict]:
    """One MLflow run per (arm, seed) in the experiment ``experiment`` at ``uri``: params, tags (and the
    labels as tags), the per-set metrics and gates at step 0, the curve at its steps. A ``file:`` store
    is MLflow's file backend (in maintenance mode since MLflow 3: allowed here explicitly)."""
    local = uri.startswith("file:")
    with temporary(MLFLOW_ALLOW_FILE_STORE="true" if local else os.environ.get("MLFLOW_ALLOW_FILE_STORE")):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise TrackingError(f"tracking.backend mlflow: mlflow cannot be imported ({exc}); install "
                                f"requirements.txt (mlflow-skinny)") from exc
        out = []
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        except Exception as exc:   # noqa: BLE001 -- re-raised with the backend and reason
            raise TrackingError(f"tracking.backend mlflow: cannot open experiment {experiment!r} at {uri}: "
                                f"{type(exc).__name__}: {exc}") from exc
        for run in runs:
            try:
                created = client.create_run(experiment_id, run_name=run.name,
                                            tags={**run.tags, **run.labels})
                run_id = created.info.run_id
                params = [Param(k, str(v)) for k, v in run.params.items()]
                metrics = [Metric(k, v, 0, 0) for k, v in run.metrics.items()]
                metrics += [Metric(k, v, 0, step) for step, values in run.curve for k, v in values.items()]
                for i in range(0, max(len(params), 1), 100):
                    client.log_batch(run_id, params=params[i:i + 100])
                for i in range(0, len(metrics), 1000):
                    client.log_batch(run_id, metrics=metrics[i:i + 1000])
                client.set_terminated(run_id, "FINISHED")
                artifact_uri = created.info.artifact_uri
            except Exception as exc:   # noqa: BLE001 -- re-raised with the backend, run and reason
                raise TrackingError(f"tracking.backend mlflow: could not log {run.name} to {uri} (experiment "
                                    f"{experiment!r}): {type(exc).__name__}: {exc}") from exc
            out.append({**summary_of(run), "run_id": run_id, "experiment_id": experiment_id,
                        "path": artifact_uri.removesuffix("/artifacts")})
    return out


def summary_of(run: TrackedRun) -> dict:
    """The marker's row of one tracked run: what was logged, counted (the values are in the backend; the
    metric names, over all runs, are the marker's ``metric_keys``)."""
    return {"arm": run.arm, "seed": run.seed, "name": run.name, "method": run.method,
            "config_hash": run.config_hash, "commit": run.commit, "decision": run.labels.get("decision"),
            "params": len(run.params), "curve_steps": len(run.curve), "metrics": len(run.metrics),
            "skipped": run.skipped, "sources": run.sources}
