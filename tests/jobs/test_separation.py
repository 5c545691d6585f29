"""No evaluation data in any choice: every job that fits, chooses or stops records the hashes of the
texts it used (``provenance.texts_used``), and none of them is a test or holdout text or the source
of an evaluation prompt."""
import json
from pathlib import Path

import pytest

from mmie import io, jobs
from mmie.data.corpus import SPLITS, split_path, split_paths, split_roles
from mmie.provenance import text_sha256, used_hashes

FORBIDDEN_PARTS = ("test", "holdout")


def forbidden_hashes(data_dir: Path, neighbours) -> set[str]:
    """Hashes of every test/holdout text and of every text or prompt of the evaluation sets."""
    out = set()
    for role in split_roles(neighbours):
        for part in FORBIDDEN_PARTS:
            out |= {text_sha256(r["text"]) for r in io.read_jsonl(split_path(data_dir, role, part))}
    for path in (data_dir / "eval_sets").glob("*.jsonl"):
        for row in io.read_jsonl(path):
            out |= {text_sha256(row[k]) for k in ("text", "prompt") if row.get(k)}
    return out


def provenance_blocks(obj, found=None) -> list[dict]:
    """Every provenance block holding ``texts_used`` anywhere inside a JSON object."""
    found = [] if found is None else found
    if isinstance(obj, dict):
        if "texts_used" in obj and "rule" in obj:
            found.append(obj)
        for v in obj.values():
            provenance_blocks(v, found)
    elif isinstance(obj, list):
        for v in obj:
            provenance_blocks(v, found)
    return found


def assert_no_test_texts(blocks: list[dict], forbidden: set[str]) -> dict[str, int]:
    used = {}
    for block in blocks:
        hashes = used_hashes(block["texts_used"])
        leaked = hashes & forbidden
        assert not leaked, f"rule {block['rule']} used {len(leaked)} test/holdout/evaluation texts " \
                           f"(groups {sorted(block['texts_used']['groups'])})"
        used[block["rule"]] = used.get(block["rule"], 0) + len(hashes)
    return used


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, demo_config):
    """prepare → fit_lid → a tiny demo model → layer selection → an activation cache, on the demo
    corpus, at library level (tens of seconds on a CPU)."""
    from mmie.config import deep_update
    from mmie.jobs import data as data_job
    from mmie.jobs import model as model_job
    from mmie.jobs import sae as sae_job

    root = tmp_path_factory.mktemp("sep")
    cfg = deep_update(demo_config, {
        "demo_model": {"vocab_size": 400, "hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1,
                       "intermediate_size": 64, "max_position": 128, "max_steps": 2, "eval_every": 1,
                       "batch_size": 8, "warmup_steps": 0, "check": {"enabled": False, "prompts": 4}},
        "generation": {"max_new_tokens": 4, "min_new_tokens": 0, "batch_size": 8},
        "layers": {"selection": {"resamples": 2, "max_texts": 12, "causal_prompts": 4, "cv_folds": 2},
                   "activations": {"max_texts": 8, "max_length": 32}},
        "data": {"lid_audit": None},
    })
    data = root / "data"
    data_job.prepare_data(cfg, str(data / "prepare_report.json"))
    splits = split_paths(data, split_roles(cfg["languages"]["neighbours"]), SPLITS)
    data_job.fit_lid(cfg, splits, str(data / "lid_check.jsonl"), str(data / "prepare_report.json"),
                     str(root / "lid" / "detector.json"), str(root / "lid" / "report.json"))
    model = root / "model"
    model_job.build_demo_model(cfg, splits, str(root / "lid" / "detector.json"), str(model),
                               str(root / "model_report.json"))
    sae_job.select_layers(cfg, str(model), splits, str(root / "selection.json"))
    sae_job.cache_activations(cfg, 0, str(model), splits, str(root / "acts.safetensors"),
                               str(root / "directions.safetensors"), str(root / "acts.json"))
    return cfg, root


def test_choosing_jobs_record_texts_used_and_none_is_a_test_text(small_run):
    cfg, root = small_run
    data = root / "data"
    forbidden = forbidden_hashes(data, cfg["languages"]["neighbours"])
    assert len(forbidden) > 400
    blocks = []
    for name in ("lid/report.json", "model_report.json", "selection.json", "acts.json"):
        blocks += provenance_blocks(json.loads((root / name).read_text()))
    used = assert_no_test_texts(blocks, forbidden)
    assert set(used) == {"fit_lid", "build_demo_model", "select_layers", "cache_activations"}
    # the records are real: the dev groups are there and hold the dev texts the jobs read
    groups = {b["rule"]: b["texts_used"]["groups"] for b in blocks}
    assert {"forget/dev", "retain/dev"} <= set(groups["fit_lid"]) and {"forget/dev", "retain/dev"} <= set(
        groups["build_demo_model"])
    assert set(groups["select_layers"]) == {"forget/dev", "retain/dev", "neighbours/ur/dev", "neighbours/pa/dev",
                                            "neighbours/bn/dev"}
    dev = {text_sha256(r["text"]) for r in io.read_jsonl(split_path(data, "forget", "dev"))}
    assert set(groups["select_layers"]["forget/dev"]["sha256"]) <= dev and groups["select_layers"]["forget/dev"]["count"] == 12


def test_adapter_early_stopping_texts_are_train_and_dev(small_run):
    """train_adapter's texts_used (the texts it encodes: train for the loss, dev for early stopping)."""
    from mmie.jobs.train import adapter_texts

    cfg, root = small_run
    data = root / "data"
    texts = adapter_texts(jobs.splits_by_role(split_paths(data, ["forget", "retain"], ["train", "dev"])), 8)
    assert set(texts) == {"forget/train", "retain/train", "forget/dev", "retain/dev"} and len(texts["forget/dev"]) == 8
    forbidden = forbidden_hashes(data, cfg["languages"]["neighbours"])
    assert not {text_sha256(t) for group in texts.values() for t in group} & forbidden


def test_no_split_file_shares_a_text_with_another(small_run):
    cfg, root = small_run
    seen: dict[str, str] = {}
    for role in split_roles(cfg["languages"]["neighbours"]):
        for part in SPLITS:
            for row in io.read_jsonl(split_path(root / "data", role, part)):
                key = text_sha256(row["text"])
                assert key not in seen, f"{role}/{part} and {seen[key]} share a text"
                seen[key] = f"{role}/{part}"


@pytest.mark.slow
def test_workflow_choices_never_see_test_texts(run_dir):
    """End to end (the reduced workflow): every output's provenance with ``texts_used`` — the
    romanized detector, the demo model and its oracle, layer selection, the activation cache, feature selection,
    LoRA and ReFT training (early stopping) and the dose-response sweep — is disjoint from test."""
    from conftest import EXP

    r = run_dir / "results" / EXP
    forbidden = forbidden_hashes(r / "data", ["ur", "pa", "bn"])
    blocks = []
    for path in sorted(r.rglob("*.json")):
        blocks += provenance_blocks(json.loads(path.read_text()))
    used = assert_no_test_texts(blocks, forbidden)
    assert {"fit_lid", "build_demo_model", "build_oracle_model", "select_layers", "cache_activations",
            "select_features", "train", "sweep_gate"} <= set(used)
    sel = json.loads((r / "layers" / "selection.json").read_text())
    assert set(sel["frequency"]) == {str(c) for c in sel["candidates"]} and isinstance(sel["stable"], bool)
