"""Optional run tracking (tracking.backend, rule track, mmie.report.tracking): on a tiny synthetic run
folder in the real formats (metrics.json, train_log.csv, decisions.json, gates.csv), W&B offline writes
only under its folder and logs the inputs' values, MLflow logs them to a local file store (read back
with MlflowClient), backend none plans no track job, and a failing backend is an error."""
import csv
import json
import os
import struct
from pathlib import Path

import pytest
import yaml

from conftest import planned_jobs, reduced_config, smk
from mmie.errors import ConfigError, TrackingError
from mmie.jobs import report

HASH, COMMIT = "d42e4bc046a557f9", "246e2698bb746a61ea08d5d82e8cd7e6b22bdab5"
METRICS = {("base", 0, "forget"): {"target_rate": 0.8125, "ppl": 95.5},
           ("base", 0, "retain"): {"ppl": 40.25, "empty_share": 0.0},
           ("lora", 0, "forget"): {"target_rate": 0.083, "ppl": 4917.6, "lang_share_hi_rom": 0.0833},
           ("lora", 0, "retain"): {"ppl": 41.5, "empty_share": 0.0},
           ("lora", 1, "forget"): {"target_rate": 0.125, "ppl": 3000.0, "lang_share_hi_rom": 0.1},
           ("lora", 1, "retain"): {"ppl": 42.0, "empty_share": 0.02}}
TRAIN_LOG = ("step,retain_ppl,forget_nll,loss,forget_loss,retain_kl,retain_nll,lr,grad_norm\n"
             "0,189.7854806001339,5.032634388316762,,,,,,\n"
             "1,,,18.085437774658203,13.862943649291992,0.0,4.2224931716918945,0.001,6.912708282470703\n"
             "2,,,18.31890106201172,13.774274826049805,1.759539190970827e-05,4.544485569000244,0.0015,8.01026725769043\n"
             "3,150.5,6.25,17.5,13.0,0.0001,4.5,0.002,10.1\n")
GATE_COLUMNS = ("arm,gate,metric,set,value,threshold,ci_low,ci_high,p_adjusted,passed,reason,verdict,direction,relative,"
                "factor,floor,reference,base,margin,ci_level,gate_alpha,p_value,correction,n_seeds,seeded,base_n_seeds,"
                "n_prompts").split(",")
GATES = [("lora", "forget_target_rate", "True", "pass"), ("lora", "neighbour_ppl[bn]", "False", "not_excluded")]


def provenance(rule):
    return {"schema_version": 1, "rule": rule, "config_hash": HASH, "git": {"commit": COMMIT, "dirty": False}}


@pytest.fixture
def run_folder(tmp_path, demo_config):
    """results/t/ of a finished run: base (seed-independent) and lora at seeds 0 and 1, two sets."""
    R = tmp_path / "results" / "t"
    paths = []
    for (arm, seed, set_name), values in METRICS.items():
        p = R / arm / f"seed{seed}" / set_name / "metrics.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"arm": arm, "seed": seed, "set": set_name, "metrics": values, "per_prompt": {},
                                 "failures": {}, "diagnostics": {}, "provenance": provenance("score")}))
        paths.append(str(p))
    checkpoints = []
    for seed in (0, 1):
        c = R / "checkpoints" / "lora" / f"seed{seed}"
        c.mkdir(parents=True)
        (c / "train_log.csv").write_text(TRAIN_LOG)
        (c / "manifest.json").write_text(json.dumps({"arm": "lora", "seed": seed, "provenance": provenance("train")}))
        checkpoints.append(str(c))
    (R / "summary").mkdir()
    decisions = R / "summary" / "decisions.json"
    decisions.write_text(json.dumps({"lora": {"decision": "STOP", "failing": ["neighbour_ppl[bn]"], "reasons": {},
                                              "verdicts": {}}, "_choices": {}, "_provenance": provenance("stats")}))
    gates = R / "summary" / "gates.csv"
    with open(gates, "w", newline="") as f:
        w = csv.DictWriter(f, GATE_COLUMNS)
        w.writeheader()
        for arm, gate, passed, verdict in GATES:
            w.writerow({"arm": arm, "gate": gate, "passed": passed, "verdict": verdict, "metric": "ppl", "set": "forget"})
    config = {**demo_config, "experiment": "t", "arms": {k: demo_config["arms"][k] for k in ("base", "lora")}}
    return {"R": R, "config": config, "metrics": paths, "checkpoints": checkpoints, "decisions": str(decisions),
            "gates": str(gates)}


def track(run, backend, **tracking):
    config = {**run["config"], "tracking": {"backend": backend, "project": None, "wandb": {"mode": "offline",
              "dir": None, "entity": None}, "mlflow": {"uri": None}, **tracking}}
    out = run["R"] / "tracking" / "tracked.json"
    report.track(config, run["metrics"], run["checkpoints"], run["decisions"], run["gates"], str(out),
                 str(run["R"] / "tracking" / "wandb"), str(run["R"] / "tracking" / "mlflow"))
    return json.loads(out.read_text())


def same_points(got, expected) -> bool:
    return [s for s, _ in got] == [s for s, _ in expected] and [v for _, v in got] == pytest.approx(
        [v for _, v in expected], rel=1e-12)


def curve():
    rows = list(csv.DictReader(TRAIN_LOG.splitlines()))
    return {f"train/{k}": [(int(r["step"]), float(r[k])) for r in rows if r[k]] for k in rows[0] if k != "step"}


# ----------------------------------------------------------------------------- MLflow
def test_mlflow_logs_every_value_to_a_local_file_store(run_folder, monkeypatch):
    pytest.importorskip("mlflow")
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    marker = track(run_folder, "mlflow")
    store = run_folder["R"] / "tracking" / "mlflow"
    assert marker["backend"] == "mlflow" and marker["uri"] == store.resolve().as_uri() and marker["experiment"] == "t"
    assert [(r["arm"], r["seed"]) for r in marker["runs"]] == [("base", 0), ("lora", 0), ("lora", 1)]
    assert marker["not_tracked"] == [] and marker["provenance"]["rule"] == "track"
    assert set(marker["metric_keys"]) == {f"{s}/{m}" for (_, _, s), values in METRICS.items() for m in values} | {
        "gate/forget_target_rate/passed", "gate/neighbour_ppl.bn/passed"}
    assert marker["curve_keys"] == sorted(curve())
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ                     # the opt-in stays inside the job
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=marker["uri"])
    for row in marker["runs"]:
        arm, seed = row["arm"], row["seed"]
        run = client.get_run(row["run_id"])
        assert (store / row["experiment_id"] / row["run_id"]).is_dir()
        assert run.info.run_name == f"{arm}-seed{seed}" and run.info.status == "FINISHED"
        expected = {f"{s}/{m}": v for (a, k, s), values in METRICS.items() if (a, k) == (arm, seed)
                    for m, v in values.items()}
        if arm == "lora":
            expected |= {"gate/forget_target_rate/passed": 1.0, "gate/neighbour_ppl.bn/passed": 0.0}
            expected |= {k: points[-1][1] for k, points in curve().items()}   # latest value of each curve
        assert run.data.metrics == pytest.approx(expected)
        tags = run.data.tags
        assert {k: tags[k] for k in ("experiment", "arm", "seed", "method", "commit", "config_hash")} == {
            "experiment": "t", "arm": arm, "seed": str(seed), "method": arm, "commit": COMMIT, "config_hash": HASH}
        params = run.data.params
        assert {k: params[k] for k in ("experiment", "arm", "seed", "method", "commit", "config_hash")} == {
            "experiment": "t", "arm": arm, "seed": str(seed), "method": arm, "commit": COMMIT, "config_hash": HASH}
        if arm == "lora":
            assert tags["decision"] == "STOP" and tags["gate/neighbour_ppl.bn/verdict"] == "not_excluded"
            assert tags["gate/forget_target_rate/verdict"] == "pass"
            spec = run_folder["config"]["arms"]["lora"]
            assert params["arm.rank"] == str(spec["rank"]) and params["arm.train.lr"] == str(spec["train"]["lr"])
            assert params["arm.train.objective"] == spec["train"]["objective"]
            for key, points in curve().items():
                history = client.get_metric_history(row["run_id"], key)
                assert same_points(sorted((m.step, m.value) for m in history), points), key
            assert row["curve_steps"] == 4
        else:
            assert "decision" not in tags and row["curve_steps"] == 0
            assert client.get_metric_history(row["run_id"], "train/loss") == []


def test_mlflow_failing_store_is_an_error_with_the_reason(run_folder):
    pytest.importorskip("mlflow")
    blocker = run_folder["R"] / "not_a_folder"
    blocker.write_text("a file where the store should be")
    with pytest.raises(TrackingError, match=r"tracking.backend mlflow: .*not_a_folder"):
        track(run_folder, "mlflow", mlflow={"uri": str(blocker)})
    assert not (run_folder["R"] / "tracking" / "tracked.json").exists()


def test_mlflow_missing_is_an_error_not_a_skip(run_folder, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    with pytest.raises(TrackingError, match="mlflow cannot be imported"):
        track(run_folder, "mlflow")


def test_backend_none_has_nothing_to_track(run_folder):
    with pytest.raises(ConfigError, match="tracking.backend is 'none'"):
        track(run_folder, "none")


# ----------------------------------------------------------------------------- W&B offline
def wandb_records(path: Path):
    """The records of a W&B offline run file (``run-<id>.wandb``): a 7-byte header (``:W&B``, magic
    0xBEE1, version 0), then LevelDB-log-style 32 KiB blocks of chunks (4-byte CRC, 2-byte length,
    1-byte type: 1 full, 2 first, 3 middle, 4 last), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1 and data[6] == 0
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:                               # a block's tail too short for a header
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def read_offline_run(run_dir: Path) -> dict:
    """config, tags, history (key -> [(step, value)]) and the final summary of an offline run."""
    (wandb_file,) = run_dir.glob("run-*.wandb")
    config, summary, history, tags = {}, {}, {}, []
    for rec in wandb_records(wandb_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            tags = list(rec.run.tags)
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            step = rec.history.step.num
            for k, v in items.items():
                if not k.startswith("_"):
                    history.setdefault(k, []).append((step, v))
        elif kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.summary.update})
    return {"config": config, "summary": summary, "history": history, "tags": tags}


def test_wandb_offline_writes_only_under_its_folder_and_logs_the_values(run_folder, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    # the environment asks for online W&B at an unreachable server: the config's offline wins, nothing is sent
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.chdir(cwd)
    before = {p for p in tmp_path.rglob("*")}
    marker = track(run_folder, "wandb")
    folder = (run_folder["R"] / "tracking" / "wandb").resolve()
    new = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in new if p.resolve() != folder and folder not in p.resolve().parents
               and p.name not in ("tracking", "tracked.json")]
    assert outside == [], outside                                 # nothing in HOME, the cwd or anywhere else
    assert os.environ["WANDB_MODE"] == "online"                    # the job's environment is restored
    assert marker["backend"] == "wandb" and marker["mode"] == "offline" and marker["dir"] == str(folder)
    assert [(r["arm"], r["seed"]) for r in marker["runs"]] == [("base", 0), ("lora", 0), ("lora", 1)]
    for row in marker["runs"]:
        arm, seed = row["arm"], row["seed"]
        run_dir = Path(row["path"])
        assert run_dir.parent == folder / "wandb" and run_dir.name.startswith("offline-run-")
        assert run_dir.name.endswith(row["run_id"])
        got = read_offline_run(run_dir)
        expected = {f"{s}/{m}": v for (a, k, s), values in METRICS.items() if (a, k) == (arm, seed)
                    for m, v in values.items()}
        assert {k: got["summary"][k] for k in expected} == pytest.approx(expected)
        assert {k: got["config"][k] for k in ("experiment", "arm", "seed", "method", "commit", "config_hash")} == {
            "experiment": "t", "arm": arm, "seed": seed, "method": arm, "commit": COMMIT, "config_hash": HASH}
        assert {f"arm:{arm}", f"seed:{seed}", f"method:{arm}", "experiment:t", f"commit:{COMMIT}",
                f"config_hash:{HASH}"} <= set(got["tags"])
        if arm == "lora":
            assert got["summary"]["decision"] == "STOP" and "decision:STOP" in got["tags"]
            assert got["summary"]["gate/neighbour_ppl.bn/passed"] == 0.0
            assert got["summary"]["gate/neighbour_ppl.bn/verdict"] == "not_excluded"
            assert got["summary"]["gate/forget_target_rate/passed"] == 1.0
            assert got["config"]["arm.rank"] == run_folder["config"]["arms"]["lora"]["rank"]
            for key, points in curve().items():
                assert same_points(got["history"][key], points), key
        else:
            assert "decision" not in got["summary"] and got["history"] == {}


def test_wandb_bad_mode_is_an_error(run_folder):
    with pytest.raises(TrackingError, match="tracking.wandb.mode"):
        track(run_folder, "wandb", wandb={"mode": "disabled", "dir": None, "entity": None})


# ----------------------------------------------------------------------------- the plan
def test_track_job_is_planned_only_with_a_backend(tmp_path):
    path = reduced_config(tmp_path)
    assert planned_jobs(smk(tmp_path, "-n")).get("track") is None             # default: backend none
    cfg = yaml.safe_load(path.read_text())
    cfg["tracking"] = {"backend": "mlflow"}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = smk(tmp_path, "-n")
    assert planned_jobs(res)["track"] == 1
    cfg["tracking"] = {"backend": "neptune"}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = smk(tmp_path, "-n", check=False)
    assert res.returncode != 0 and "neptune" in res.stdout + res.stderr


def test_a_failed_run_is_listed_as_not_tracked(run_folder):
    """lora seed 1's training failed (mmie.failures stubs): the other runs are tracked, it is listed."""
    pytest.importorskip("mlflow")
    from mmie.failures import write_stubs

    origin = {"rule": "train", "wildcards": {"arm": "lora", "seed": "1"}, "error": "RuntimeError: planted",
              "log": "logs/train/lora/seed1.log"}
    checkpoint = run_folder["checkpoints"][1]
    write_stubs([checkpoint], {checkpoint}, origin)
    stubs = [p for p in run_folder["metrics"] if "/lora/seed1/" in p]
    write_stubs(stubs, set(), {"rule": "score", "wildcards": {"arm": "lora", "seed": "1"}, "error": "blocked",
                               "log": "", "blocked_by": origin})
    marker = track(run_folder, "mlflow")
    assert [(r["arm"], r["seed"]) for r in marker["runs"]] == [("base", 0), ("lora", 0)]
    assert marker["not_tracked"] == [{"arm": "lora", "seed": 1, "rule": "train", "error": "RuntimeError: planted"}]


def test_mlflow_goes_to_a_server_only_when_configured(tmp_path, monkeypatch):
    from mmie.report.tracking import mlflow_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")    # the environment does not choose
    assert mlflow_uri(None, "results/t/tracking/mlflow") == (tmp_path / "results/t/tracking/mlflow").as_uri()
    assert mlflow_uri("my_store", "unused") == (tmp_path / "my_store").as_uri()
    assert mlflow_uri("http://mlflow.example:5000", "unused") == "http://mlflow.example:5000"
    assert mlflow_uri("file:///data/store", "unused") == "file:///data/store"
