"""Recorded job failures: one failed (arm, seed) never costs the other arms' tables (docs/running.md).

A *tolerant* job (tune, train, evaluate, score, judge, attack, utility, sweep_gate, train_sae, select_features,
build_oracle_model: the jobs of one arm or one layer) runs its work inside ``outcome(snakemake)``:

- When the work raises, the error and its traceback go to the job's log, a **failure record**
  ``results/<experiment>/failures/<rule>/<wildcards>.json`` is written (rule, wildcards, error, log,
  time), and every declared output becomes a **stub** saying so: a file holding one JSON object
  ``{"mmie_failed": {...}}``, a directory holding ``MMIE_FAILED.json``. The job then ends normally, so
  Snakemake goes on with everything else. A job of several independent parts (the attack job: one
  output per attack) raises ``PartialFailure`` after the others finished: recorded the same way, but
  only the failed parts' outputs become stubs.
- A job whose inputs include a stub does not run its work: it writes stubs of its own outputs that
  name the failed job (``blocked_by``), without loading a model.
- The summary jobs (aggregate, stats, plots, samples, sae_report, the report) read stubs as recorded
  failures: the failed (arm, seed) is listed with its reason in ``summary/failed_jobs.csv``, the
  results page and the report; every other arm's numbers are computed as without it.
- Out-of-memory errors are not recorded: they end the job as failed, so Snakemake's ``--retries``
  reruns it with more memory (rules/common.smk ``gpu_mem``).

A failed job reruns on the next ``snakemake`` call, and asking for any of its target paths reruns
it: each tolerant rule has ``params: failed=failure_token(rule)``, the time of the job's latest
recorded failure, and Snakemake reruns a job whose params changed. A rerun that succeeds marks the
record ``resolved`` (the token stays, so nothing reruns twice). ``python -m mmie.failures <results
dir>`` lists the unresolved failures and exits 1 when there are any (``make demo`` runs it last).

``MMIE_FAULT=<rule>:<wildcard values joined by ':'>`` (e.g. ``train:lora:0``) makes that job fail on
purpose: the test suite's way to check all of the above on a real run. With ``=oom`` appended
(``score:base:0=oom``) the job runs out of memory instead: not recorded, the job fails (and Snakemake's
``--retries`` give it more memory)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

KEY = "mmie_failed"
DIR_MARKER = "MMIE_FAILED.json"
_HEAD = b'{"' + KEY.encode() + b'"'


class FaultInjected(RuntimeError):
    """The failure MMIE_FAULT asked for (tests)."""


class PartialFailure(RuntimeError):
    """Some parts of a job failed and the rest finished (the attack job: one output per attack).
    ``failed``: {output path: error}. Recorded like any failure, but only those outputs become stubs;
    the finished outputs stay."""

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = dict(failed)
        super().__init__("; ".join(f"{Path(out).name}: {err}" for out, err in self.failed.items()))


def record_path(results: str | Path, rule: str, wildcards: dict) -> Path:
    """Where a job's failure record lives: ``<results>/failures/<rule>/<k1>-<v1>_<k2>-<v2>.json``."""
    name = "_".join(f"{k}-{v}" for k, v in sorted(wildcards.items())) or "all"
    return Path(results) / "failures" / rule / f"{name}.json"


def token(results: str | Path, rule: str, wildcards: dict) -> str:
    """The rerun trigger of a tolerant job: the time of its latest recorded failure, "" if none."""
    path = record_path(results, rule, wildcards)
    if not path.is_file():
        return ""
    return json.loads(path.read_text(encoding="utf-8"))["failed_at"]


def stub_of(path: str | Path) -> dict | None:
    """The failure a stub output records, or None when ``path`` is a real output."""
    p = Path(path)
    if p.is_dir():
        marker = p / DIR_MARKER
        return json.loads(marker.read_text(encoding="utf-8"))[KEY] if marker.is_file() else None
    if not p.is_file():
        return None
    with open(p, "rb") as fh:
        if fh.read(len(_HEAD)) != _HEAD:
            return None
    return json.loads(p.read_text(encoding="utf-8"))[KEY]


def write_stubs(outputs: list[str], directories: set[str], info: dict) -> None:
    """Every output replaced by a stub carrying ``info`` (partial outputs of the failed work are removed)."""
    for out in outputs:
        p = Path(out)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        body = json.dumps({KEY: {**info, "output": out}}, ensure_ascii=False) + "\n"
        if out in directories:
            p.mkdir(parents=True)
            (p / DIR_MARKER).write_text(body, encoding="utf-8")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(body, encoding="utf-8")


def _flat(items) -> list[str]:
    out = []
    for x in items:
        out.extend(_flat(x) if isinstance(x, list | tuple) else [str(x)])
    return out


def _directories(snakemake) -> set[str]:
    """The rule's ``directory()`` outputs. A rule script's ``snakemake.output`` holds plain strings (the
    flags are gone), so an output without a file suffix counts as a directory: mmie's folder outputs
    (checkpoints/<arm>/seed<k>, sae/layer<l>, model, oracle_model) have none, its files all have one."""
    from snakemake.io import is_flagged

    return {str(o) for o in _flat(list(snakemake.output)) if is_flagged(o, "directory") or not Path(o).suffix}


def is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _check_fault(rule: str, wildcards: dict) -> None:
    want = os.environ.get("MMIE_FAULT")
    if not want:
        return
    job, _, kind = want.partition("=")
    if job != ":".join([rule, *map(str, wildcards.values())]):
        return
    if kind == "oom":
        raise MemoryError(f"MMIE_FAULT={want}: this job runs out of memory on purpose")
    if kind:
        raise ValueError(f"MMIE_FAULT={want}: unknown fault {kind!r} (none, or '=oom')")
    raise FaultInjected(f"MMIE_FAULT={want}: this job fails on purpose")


@contextlib.contextmanager
def outcome(snakemake):
    """Run a tolerant job's work: ``with outcome(snakemake) as run: if run: <work>``. ``run`` is
    False when an input is a stub (this job's outputs became stubs naming the failed job); an
    exception of the work is recorded (see the module doc) instead of ending the job."""
    rule = snakemake.rule
    wildcards = {k: str(v) for k, v in snakemake.wildcards.items()}
    results = Path("results") / snakemake.config["experiment"]
    outputs = _flat(list(snakemake.output))
    directories = _directories(snakemake)
    here = {"rule": rule, "wildcards": wildcards, "log": str(snakemake.log[0]) if snakemake.log else None}
    for path in _flat(list(snakemake.input)):
        upstream = stub_of(path)
        if upstream is not None:
            origin = upstream.get("blocked_by") or {k: upstream[k] for k in ("rule", "wildcards", "error", "log",
                                                                              "failed_at")}
            log.error("not run: input %s is the recorded failure of %s %s: %s", path, origin["rule"],
                      origin["wildcards"], origin["error"])
            write_stubs(outputs, directories, {**here, "error": f"blocked: {origin['rule']} failed",
                                               "blocked_by": origin, "failed_at": origin["failed_at"]})
            yield False
            return
    record = record_path(results, rule, wildcards)

    def recorded(exc: Exception) -> None:
        tb = traceback.format_exc()
        log.error("job failed; its outputs are recorded failures (mmie.failures):\n%s", tb)
        info = {**here, "error": f"{type(exc).__name__}: {exc}", "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "traceback_tail": tb.strip().splitlines()[-8:], "status": "failed"}
        stubbed = [o for o in outputs if o in exc.failed] if isinstance(exc, PartialFailure) else outputs
        missing = sorted(set(exc.failed) - set(outputs)) if isinstance(exc, PartialFailure) else []
        if missing:
            raise ValueError(f"{rule}: a partial failure names {missing}, which are not outputs of the job") from exc
        write_stubs(stubbed, directories, {k: v for k, v in info.items() if k != "status"})
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"mmie: {rule} {wildcards} FAILED ({info['error'][:200]}); recorded in {record}, the other jobs go on",
              file=sys.__stderr__)

    try:
        _check_fault(rule, wildcards)
    except FaultInjected as exc:
        recorded(exc)
        yield False
        return
    try:
        yield True
    except Exception as exc:  # recorded: the log, the failure record and every output's stub say what failed
        if is_memory_error(exc):
            raise
        recorded(exc)
    else:
        if record.is_file():  # a rerun of a failed job succeeded: keep the token (nothing reruns twice)
            info = json.loads(record.read_text(encoding="utf-8"))
            info["status"] = "resolved"
            record.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


FAILED_COLUMNS = ["arm", "seed", "rule", "wildcards", "error", "log", "sets"]


def split(paths: list[str]) -> tuple[list[str], list[dict]]:
    """``paths`` (per-(arm, seed, set) files: ``<arm>/seed<k>/<set>/<file>``) into the real outputs and
    the failed (arm, seed) units: one row per unit with the failed job (the origin, when the unit was
    blocked by an upstream failure), its error and log, and the sets it cost."""
    ok: list[str] = []
    failed: dict[tuple[str, int], dict] = {}
    for path in paths:
        info = stub_of(path)
        if info is None:
            ok.append(path)
            continue
        p = Path(path)
        arm, seed, set_name = p.parents[2].name, int(p.parents[1].name.removeprefix("seed")), p.parent.name
        origin = info.get("blocked_by") or info
        row = failed.setdefault((arm, seed), {
            "arm": arm, "seed": seed, "rule": origin["rule"],
            "wildcards": ", ".join(f"{k}={v}" for k, v in origin["wildcards"].items()),
            "error": origin["error"], "log": origin["log"], "sets": []})
        row["sets"].append(set_name)
    rows = [{**r, "sets": " ".join(r["sets"])} for r in failed.values()]
    return ok, rows


def markdown_table(rows: list[dict]) -> list[str]:
    """``split``'s failed (arm, seed) rows as Markdown table lines (summary.md and results.md)."""
    return ["| arm | seed | failed job | error | log |", "|---|---|---|---|---|"] + [
        f"| {r['arm']} | {r['seed']} | {r['rule']} ({r['wildcards']}) | {str(r['error'])[:300].replace('|', '/')} "
        f"| {r['log']} |" for r in rows]


def real(paths: list[str]) -> tuple[list[str], list[dict]]:
    """``paths`` without the stubs, and the failures those stubs record (their origin job)."""
    ok, lost = [], []
    for path in paths:
        info = stub_of(path)
        if info is None:
            ok.append(path)
        else:
            lost.append(info.get("blocked_by") or info)
    return ok, lost


def failure_figure(title: str, lost: list[dict]):
    """A figure that says what it would have shown and which failed job kept it empty."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3))
    ax.axis("off")
    text = "\n".join(f"{r['rule']} ({', '.join(f'{k}={v}' for k, v in r['wildcards'].items())}): {r['error'][:110]}"
                     for r in lost[:6])
    ax.text(0.01, 0.95, f"{title}: no data — every input is a recorded failure\n\n{text}", va="top", ha="left",
            fontsize=9, family="monospace", wrap=True)
    return fig


def unresolved(results: str | Path) -> list[dict]:
    """Every failure record under ``<results>/failures`` not resolved by a later run, oldest first."""
    root = Path(results) / "failures"
    recs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.glob("*/*.json"))] if root.is_dir() else []
    return sorted((r for r in recs if r["status"] == "failed"), key=lambda r: r["failed_at"])


def banner(results: str | Path) -> str:
    """A loud summary of the unresolved failures ("" when there are none)."""
    recs = unresolved(results)
    if not recs:
        return ""
    lines = ["", "=" * 100, f"mmie: {len(recs)} job(s) FAILED; the summary, plots and report cover everything else "
             f"and list them (summary/failed_jobs.csv):"]
    for r in recs:
        wc = ", ".join(f"{k}={v}" for k, v in r["wildcards"].items())
        lines.append(f"  - {r['rule']} ({wc}): {r['error'][:300]}")
        lines.append(f"    log: {r['log']}")
    lines += ["Fix the cause (the message names the setting), then run snakemake again: failed jobs rerun, and so "
              "does everything that depends on them.", "=" * 100, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mmie.failures results/<experiment>", file=sys.stderr)
        return 2
    text = banner(args[0])
    if text:
        print(text, file=sys.stderr)
        return 1
    print(f"mmie: no failed jobs recorded under {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
