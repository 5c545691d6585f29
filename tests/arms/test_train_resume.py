"""A killed training job loses minutes, not hours (issue: resumable training): the job is SIGKILLed
mid-training in a subprocess, rerun, and must end with the very same checkpoint as an
uninterrupted run; leftovers of the kill are swept, the resume state is removed after success."""
import copy
import json
import os
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import ROOT, tiny_train_files

CHILD = r'''
import json, logging, os, signal, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from mmie.jobs import train as train_job
from mmie.arms import objectives
args = json.load(open(sys.argv[1]))
if args["reference_out"]:
    train_job.train(args["config"], "lora", 0, None, args["data"], args["reference_out"])
if args["kill_at_step"]:
    real, calls = objectives.kl_to_reference, {"n": 0}

    def kill_mid_step(*a, **k):   # called once per training step, between forward and backward
        calls["n"] += 1
        if calls["n"] == args["kill_at_step"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    objectives.kl_to_reference = kill_mid_step
train_job.train(args["config"], "lora", 0, None, args["data"], args["out"])
'''


def run_child(tmp_path, name, **args):
    (tmp_path / f"{name}.json").write_text(json.dumps(args))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / f"{name}.json")], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)


def test_a_killed_training_job_resumes_to_the_same_checkpoint(tiny_lm, demo_texts, demo_config, tmp_path):
    # the early-stopping split is dev (eval: its name before the data split had one)
    data = tiny_train_files(tmp_path, tiny_lm, demo_texts, {"train": slice(0, 40), "eval": slice(200, 208),
                                                             "dev": slice(200, 208)})
    splits = [str(data / role / f"{part}.jsonl") for role in ("forget", "retain") for part in ("train", "dev")]
    config = copy.deepcopy(demo_config)
    config["model"].update(source="local", path=str(tmp_path / "model"), device="cpu")
    config["resources"]["torch_threads"] = 1
    train = {**config["arms"]["lora"]["train"], "lr": 2e-2, "max_steps": 12, "eval_every": 3, "batch_size": 4,
             "max_length": 32, "heldout_items": 8, "max_retain_ppl_ratio": 50.0}
    config["arms"] = {"lora": {"method": "lora", "rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"],
                               "train": train}}
    ckpts = tmp_path / "results" / "checkpoints" / "lora"
    out, reference = ckpts / "seed0", ckpts / "reference" / "seed0"
    state = ckpts / "seed0.resume" / "state.pt"

    # 1) an uninterrupted run, then the same job killed during step 8 (states were saved after 3 and 6)
    killed = run_child(tmp_path, "first", config=config, data=splits, out=str(out),
                       reference_out=str(reference), kill_at_step=8)
    assert (reference / "adapter_model.safetensors").is_file(), killed.stderr[-3000:]
    assert not (ckpts / "reference" / "seed0.resume").exists()     # removed after success
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists()
    assert torch.load(state, weights_only=True)["step"] == 6
    # leftovers a kill can leave: a half-written checkpoint folder and a half-written state file
    (ckpts / ".seed0.k1ll3d").mkdir()
    (ckpts / ".seed0.k1ll3d" / "adapter_model.safetensors").write_bytes(b"half")
    (state.parent / ".state.pt.abc123.tmp").write_bytes(b"half")

    # 2) the rerun continues after step 6 and ends with the uninterrupted run's checkpoint, bit for bit
    resumed = run_child(tmp_path, "rerun", config=config, data=splits, out=str(out), reference_out=None,
                        kill_at_step=None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after step 6 of 12" in resumed.stderr
    a, b = load_file(str(reference / "adapter_model.safetensors")), load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (out / "train_log.csv").read_text() == (reference / "train_log.csv").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["resumed_after_step"] == 6
    assert json.loads((reference / "manifest.json").read_text())["summary"]["kept_step"] == \
        manifest["summary"]["kept_step"]
    # swept and cleaned: nothing but the checkpoint folders is left
    assert sorted(p.name for p in ckpts.iterdir()) == ["reference", "seed0"]
    assert "unfinished checkpoint folder of a killed run" in resumed.stderr
