"""Utility through lm-evaluation-harness (docs/method.md, "Utility through lm-eval"): lm-eval's tasks run
on a model object as it is loaded (with whatever hooks or adapters are on it at the time), offline.

``run`` builds lm-eval's ``HFLM`` around the model instance and its tokenizer and calls
``lm_eval.simple_evaluate``; ``summarize`` turns lm-eval's result into one record per task: each
metric with lm-eval's own standard error (``<metric>_stderr``), the number of documents, the shots
and the task's version. Nothing reaches the network: the Hugging Face libraries are switched to
offline mode for the run (``offline``), and a task whose dataset is not already in the local cache
fails naming the task (``HarnessError``). lm-eval is imported only inside functions."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmie.environment import temporary
from mmie.errors import MMIEError

log = logging.getLogger(__name__)

#: environment switches of the Hugging Face libraries that forbid any download
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class HarnessError(MMIEError):
    """An lm-eval task cannot be found or loaded offline, or lm-eval returned no score for it."""


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The Hugging Face hub and datasets in offline mode: the environment (for anything imported later)
    and the already-imported libraries' module constants (read at import), restored afterwards."""
    patched = []
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_DATASETS_OFFLINE")):
        import importlib
        import sys

        if module.split(".")[0] not in sys.modules:
            continue   # imported later, inside the block: reads the environment set below
        mod = importlib.import_module(module)
        if isinstance(getattr(mod, attr, None), bool):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    try:
        with temporary(**OFFLINE_ENV):
            yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)


def task_manager(include_paths: Sequence[str] = ()):
    """lm-eval's task registry: its own tasks plus the YAML tasks under ``include_paths``."""
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).resolve()) for p in include_paths]
    for p in paths:
        if not Path(p).is_dir():
            raise HarnessError(f"utility.include_path {p} is not a folder (it holds the YAML files of extra lm-eval tasks)")
    tm = TaskManager(include_path=paths or None)
    _resolve_local_files(tm, paths)
    return tm


def _resolve_local_files(tm, include_paths: Sequence[str]) -> None:
    """Every task of ``include_paths`` whose ``dataset_kwargs.data_files`` are relative paths gets them
    relative to its YAML file (``datasets`` would read them relative to the working directory): its entry
    in lm-eval's registry (``TaskManager.task_index``) becomes the resolved config, so it loads so by name,
    alone or as a member of a group. The YAML's path stays in the config's ``metadata.mmie_yaml``."""
    import dataclasses

    from lm_eval.tasks._yaml_loader import load_yaml

    roots = [Path(p).resolve() for p in include_paths]

    def resolve(f, folder: Path):
        if isinstance(f, str):
            return f if "://" in f or Path(f).is_absolute() else str(folder / f)
        if isinstance(f, list):
            return [resolve(x, folder) for x in f]
        if isinstance(f, dict):
            return {k: resolve(v, folder) for k, v in f.items()}
        return f

    for name, entry in list(tm.task_index.items()):
        if entry.yaml_path is None or entry.cfg is None or "task" not in entry.cfg or "group" in entry.cfg:
            continue
        yaml_path = Path(entry.yaml_path).resolve()
        if not any(yaml_path.is_relative_to(r) for r in roots):
            continue
        cfg = load_yaml(yaml_path, resolve_func=True)
        kwargs = cfg.get("dataset_kwargs") or {}
        files = kwargs.get("data_files")
        if not files or resolve(files, yaml_path.parent) == files:
            continue
        cfg = {**cfg, "dataset_kwargs": {**kwargs, "data_files": resolve(files, yaml_path.parent)},
               "metadata": {**(cfg.get("metadata") or {}), "mmie_yaml": str(yaml_path)}}
        tm.task_index[name] = dataclasses.replace(entry, yaml_path=None, cfg=cfg)


def load_tasks(tm, names: Sequence[str]) -> list:
    """The lm-eval Task (or Group) objects of ``names``, each built offline; an unknown name or a task
    whose data is not on this machine raises ``HarnessError`` naming the task."""
    if not names:
        raise HarnessError("utility.tasks is empty: no lm-eval task to run")
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        import difflib

        hints = {n: difflib.get_close_matches(n, tm.all_tasks, n=3) for n in unknown}
        raise HarnessError(f"utility.tasks: no lm-eval task, group or tag named {unknown} (close names: {hints}); "
                           f"lm-eval's own tasks are listed by `lm-eval ls tasks`, your own go into a folder named by "
                           f"utility.include_path")
    built = []
    for name in names:
        with offline():
            try:
                loaded = tm.load([name])
            except Exception as err:
                entry = tm.task_index.get(name)
                path = entry and (entry.yaml_path or (entry.cfg or {}).get("metadata", {}).get("mmie_yaml"))
                source = f" ({path})" if path else ""
                raise HarnessError(
                    f"lm-eval task {name!r}{source} could not be loaded offline: {type(err).__name__}: {err}. The "
                    f"utility rule never downloads: a task whose dataset is on the Hugging Face Hub (mmlu, arc_easy, "
                    f"hellaswag, ...) needs it in the local HF cache beforehand (e.g. run `lm-eval run --model dummy "
                    f"--tasks {name} --limit 1` or datasets.load_dataset once on a machine with network, with the "
                    f"same HF_HOME), and a local task's data_files must exist") from err
        if name in loaded["groups"]:
            built.append(loaded["groups"][name])
        else:
            built.extend(loaded["tasks"].values())
    return built


def run(model, tokenizer, tasks: Sequence[str], *, include_paths: Sequence[str] = (), limit=None,
        num_fewshot: int | None = None, batch_size: int = 8, max_length: int | None = None, seed: int = 0,
        bootstrap_iters: int = 100000, log_samples: bool = False, system_instruction: str | None = None) -> dict:
    """lm-eval's ``simple_evaluate`` of ``tasks`` on ``model`` as it is now (the caller switches an arm
    on around this call), offline. Returns lm-eval's result dict. ``bootstrap_iters``: lm-eval's
    resamples for the standard error of a metric without a closed form (its default, 100000). lm-eval's
    own seeds of document order and few-shot sampling stay at its defaults, so every arm and seed sees
    the same prompts (and lm-eval's published runs did too); ``seed`` is torch's (a generation task's
    sampling)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tm = task_manager(include_paths)
    objs = load_tasks(tm, tasks)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    with offline():
        result = lm_eval.simple_evaluate(
            model=lm, tasks=objs, task_manager=tm, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
            bootstrap_iters=bootstrap_iters, log_samples=log_samples, torch_random_seed=seed,
            system_instruction=system_instruction)
    if result is None:
        raise HarnessError("lm_eval.simple_evaluate returned nothing (not rank 0?)")
    return result


def _number(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def summarize(result: dict) -> dict[str, dict]:
    """Per task (and group) of an lm-eval result: ``metrics`` ({metric: value, metric_stderr: value};
    a filter other than lm-eval's ``none`` is kept in the name as ``<metric>,<filter>``), ``n`` (documents
    scored), ``num_fewshot``, ``version`` and ``higher_is_better``. A metric lm-eval gives no standard
    error for has ``None`` there (e.g. a group aggregate it cannot pool)."""
    out: dict[str, dict] = {}
    n_samples = result.get("n-samples", {})
    for task, scores in {**result.get("results", {}), **result.get("groups", {})}.items():
        metrics: dict[str, float | None] = {}
        for key, value in scores.items():
            if key == "alias" or not isinstance(value, (int, float)) or "," not in key:
                continue
            name, filt = key.split(",", 1)
            label = name if filt == "none" else f"{name.removesuffix('_stderr')},{filt}" + (
                "_stderr" if name.endswith("_stderr") else "")
            metrics[label] = _number(value)
        values = {k for k in metrics if not k.endswith("_stderr")}
        for k in values:
            metrics.setdefault(f"{k}_stderr", None)
        if not values:
            raise HarnessError(f"lm-eval returned no score for task {task!r}: {scores}")
        samples = n_samples.get(task, {})
        out[task] = {"metrics": dict(sorted(metrics.items())), "n": samples.get("effective"),
                     "n_total": samples.get("original"), "num_fewshot": result.get("n-shot", {}).get(task),
                     "version": result.get("versions", {}).get(task),
                     "higher_is_better": result.get("higher_is_better", {}).get(task, {})}
    return out


def per_item(result: dict) -> dict[str, dict[str, list]]:
    """Per task, each scored document of a run with ``log_samples``: ``doc_id``, each metric's value and,
    for a log-likelihood task, the log-likelihood of each choice (``loglikelihoods``): what a paired
    comparison between arms on the same documents needs."""
    out: dict[str, dict[str, list]] = {}
    for task, samples in (result.get("samples") or {}).items():
        rows: dict[str, list] = {"doc_id": []}
        metrics = sorted({m for s in samples for m in s.get("metrics", [])})
        for m in metrics:
            rows[m] = []
        lls = []
        for s in samples:
            rows["doc_id"].append(s["doc_id"])
            for m in metrics:
                v = s.get(m)
                rows[m].append(_number(float(v)) if isinstance(v, (int, float)) else None)
            resp = s.get("filtered_resps") or []
            if resp and all(isinstance(r, (list, tuple)) and r and isinstance(r[0], (int, float)) for r in resp):
                lls.append([float(r[0]) for r in resp])
        if len(lls) == len(samples):
            rows["loglikelihoods"] = lls
        out[task] = rows
    return out


def groups(result: dict) -> dict[str, list[str]]:
    """lm-eval's groups of the run: group -> its member tasks and groups (``group_subtasks``), what a
    group's per-document values are pooled from."""
    return {g: list(members) for g, members in (result.get("group_subtasks") or {}).items() if members}


def configs(result: dict) -> dict:
    """lm-eval's resolved task configs (prompt templates, splits, metrics) as plain JSON (functions by name)."""
    import json

    return json.loads(json.dumps(result.get("configs", {}), default=str))
