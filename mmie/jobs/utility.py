"""Job functions of rules/utility.smk: utility through lm-evaluation-harness (optional; ``utility.tasks``).

``utility`` loads one (arm, seed) exactly as its evaluation does (``mmie.jobs.evaluate.load_arm``: the
adapter or the edit hooks on the same loaded model), switches the arm on (``arm.active()``) and runs
lm-eval's tasks on it (``mmie.model.harness``), offline; it writes ``<arm>/seed<k>/utility.json``:
each task's metrics with lm-eval's own standard errors (``<metric>_stderr``), the per-document values,
the lm-eval settings and provenance. ``utility_table`` collects every (arm, seed) into
``summary/utility.csv`` (``mmie.report.utility``)."""

from __future__ import annotations

import logging
import time
from importlib import metadata

from mmie import io, provenance
from mmie.jobs import JobConfig, job

log = logging.getLogger(__name__)


@job("model", "gate", "deterministic", "languages", "utility", arm=True)
def utility(config: JobConfig, arm_name: str, seed: int, model_dir: str | None, out: str,
            checkpoint: str | None = None, assets=None, method_files=(), task_files=()) -> None:
    """lm-eval's ``utility.tasks`` on the arm ``arm_name`` at ``seed``, as mmie evaluates it: the model
    and the arm built by ``load_arm`` (``assets``: the rule's named layer-asset inputs, ``method_files``
    the files the arm's method declares), every lm-eval request inside ``arm.active()``; a prompt
    arm's instruction is lm-eval's ``system_instruction``. ``task_files``: the files of
    ``utility.include_path`` (the rule's input: a changed task reruns the job)."""
    from mmie.jobs.evaluate import load_arm
    from mmie.model import harness
    from mmie.seeding import seed_everything

    t0 = time.time()
    u = config["utility"]
    if not u["tasks"]:
        raise ValueError("utility: utility.tasks is empty, so the workflow plans no utility job; rules/utility.smk "
                         "is miswired")
    seed_everything(seed, config["deterministic"])
    lm, arm, _ = load_arm(config, arm_name, seed, model_dir, checkpoint, assets, method_files)
    include = [u["include_path"]] if u["include_path"] else []
    with arm.active():
        result = harness.run(arm.model, lm.tokenizer, list(u["tasks"]), include_paths=include, limit=u["limit"],
                             num_fewshot=u["num_fewshot"], batch_size=u["batch_size"], max_length=u["max_length"],
                             seed=seed, bootstrap_iters=u["bootstrap_iters"], log_samples=True,
                             system_instruction=arm.system)
    tasks = harness.summarize(result)
    for task, rec in tasks.items():
        log.info("utility %s/seed%d %s: %s", arm_name, seed, task,
                 {k: round(v, 4) for k, v in rec["metrics"].items() if v is not None})
    io.write_json(out, {
        "arm": arm_name, "seed": seed, "method": arm.method, "arm_details": arm.details,
        "tasks": tasks, "items": harness.per_item(result), "groups": harness.groups(result),
        "lm_eval": {"version": metadata.version("lm_eval"), "tasks": list(u["tasks"]), "limit": u["limit"],
                    "num_fewshot": u["num_fewshot"], "batch_size": u["batch_size"],
                    "bootstrap_iters": u["bootstrap_iters"], "include_path": u["include_path"],
                    "system_instruction": arm.system,
                    "seeds": {k: result.get("config", {}).get(k)
                              for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")},
                    "configs": harness.configs(result)},
        "seconds": round(time.time() - t0, 1),
        "provenance": provenance.build(config, seed=seed, runtime=lm.runtime, rule="utility", inputs=list(task_files)),
    })


@job("arms", "utility")
def utility_table(config: JobConfig, inputs: list[str], out: str) -> None:
    """``summary/utility.csv``: one row per (arm, seed, task, metric) with lm-eval's standard error and
    the value relative to base at the same seed (information: the intervals and gates resample the
    per-document values instead, ``mmie.report.utility.records``)."""
    from mmie.report.utility import table

    base = next((a for a, spec in config["arms"].items() if spec["method"] == "base"), None)
    df = table(inputs, base=base)
    io.write_text(out, df.to_csv(index=False))
    log.info("utility: %d rows from %d utility results", len(df), len(inputs))
