"""The oracle arm: the demo model's recipe and tokenizer trained without the target language
(build_oracle_model), evaluated once next to the base model (method oracle). It must never see a
forget or romanized forget text, must share the base model's tokenizer byte for byte, must not
continue Hindi prompts in Hindi, and is planned as one seedless evaluation that reads its folder."""
import copy
import json
import subprocess

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, planned_jobs, reduced_config
from mmie import io
from mmie.config import check, load, oracle_arm
from mmie.data.corpus import SPLITS, split_path, split_paths, split_roles
from mmie.errors import ConfigError
from mmie.provenance import text_sha256, used_hashes

NEIGHBOURS = ("ur", "pa", "bn")
# what the oracle may train on (the rule's splits input) and the prompts of its reported Hindi share
ORACLE_SPLITS = (["retain", *(f"neighbour_{c}" for c in NEIGHBOURS)], ["train", "dev"])


@pytest.fixture(scope="module")
def small_build(tmp_path_factory, demo_config):
    """prepare → fit_lid → a small base demo model → its oracle, at library level on the demo corpus (a
    minute on a shared CPU); ``demo.train`` is wrapped to record the texts each model trained on."""
    from mmie.config import deep_update
    from mmie.jobs import data as data_job
    from mmie.jobs import model as model_job
    from mmie.model import demo

    root = tmp_path_factory.mktemp("oracle")
    cfg = deep_update(demo_config, {
        "demo_model": {"vocab_size": 600, "hidden_size": 48, "layers": 2, "heads": 2, "kv_heads": 1,
                       "intermediate_size": 96, "max_position": 96, "max_steps": 80, "eval_every": 40,
                       "batch_size": 16, "warmup_steps": 5, "lr": 0.005, "check": {"enabled": False, "prompts": 12}},
        "generation": {"max_new_tokens": 12, "min_new_tokens": 6, "batch_size": 12},
        "data": {"lid_audit": None},
    })
    data = root / "data"
    data_job.prepare_data(cfg, str(data / "prepare_report.json"))
    splits = split_paths(data, split_roles(cfg["languages"]["neighbours"]), SPLITS)
    detector = root / "lid" / "detector.json"
    data_job.fit_lid(cfg, splits, str(data / "lid_check.jsonl"), str(data / "prepare_report.json"), str(detector),
                     str(root / "lid" / "report.json"))
    trained_on = {}
    real_train = demo.train

    def recording(c, texts, heldout, out_dir, tokenizer=None):
        trained_on["oracle" if tokenizer is not None else "base"] = {"train": list(texts), "heldout": dict(heldout)}
        return real_train(c, texts, heldout, out_dir, tokenizer=tokenizer)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "train", recording)
        model_job.build_demo_model(cfg, splits, str(detector), str(root / "model"), str(root / "model_report.json"))
        oracle_inputs = split_paths(data, *ORACLE_SPLITS)
        model_job.build_oracle_model(cfg, oracle_inputs, str(split_path(data, "forget", "dev")), str(root / "model"),
                                     str(detector), str(root / "oracle_model"), str(root / "oracle_report.json"))
    return cfg, root, trained_on


def target_texts(cfg, data) -> set[str]:
    """Every forget and romanized-forget text of every split, and the romanized forms of forget/train
    (what the base model adds under demo_model.include_romanized)."""
    from mmie.lang.translit import romanize

    out = set()
    for role in ("forget", "forget_romanized"):
        for part in SPLITS:
            out |= {r["text"] for r in io.read_jsonl(split_path(data, role, part))}
    out |= {romanize(r["text"], cfg["lid"]["romanization"]) for r in io.read_jsonl(split_path(data, "forget", "train"))}
    return out


def test_the_oracle_never_trains_on_a_target_text(small_build):
    cfg, root, trained_on = small_build
    data = root / "data"
    forbidden = target_texts(cfg, data)
    oracle = trained_on["oracle"]
    # the texts handed to training and early stopping hold no forget or romanized forget text ...
    assert not (set(oracle["train"]) | {t for v in oracle["heldout"].values() for t in v}) & forbidden
    assert list(oracle["heldout"]) == ["en", "ur", "pa", "bn"]     # early stopping on every language it learns
    retain_train = {r["text"] for r in io.read_jsonl(split_path(data, "retain", "train"))}
    assert retain_train <= set(oracle["train"])
    # ... while the base model's do (the check can see a leak)
    assert set(trained_on["base"]["train"]) & forbidden
    # and the recorded provenance says the same, by hash
    report = json.loads((root / "oracle_report.json").read_text())
    assert report["training_texts"] == ["neighbours/bn/dev", "neighbours/bn/train", "neighbours/pa/dev",
                                        "neighbours/pa/train", "neighbours/ur/dev", "neighbours/ur/train",
                                        "retain/dev", "retain/train"]
    hashes = used_hashes(report["provenance"]["texts_used"])
    assert hashes and not hashes & {text_sha256(t) for t in forbidden}
    assert {text_sha256(t) for t in retain_train} <= hashes
    assert report["provenance"]["rule"] == "build_oracle_model"


def test_the_oracle_job_refuses_a_target_split(small_build, tmp_path):
    from mmie.jobs import model as model_job

    cfg, root, _ = small_build
    data = root / "data"
    for role in ("forget", "forget_romanized"):
        splits = split_paths(data, ORACLE_SPLITS[0], ["train", "dev"]) + split_paths(data, [role], ["train"])
        with pytest.raises(ValueError, match=rf"target-language splits \['{role}/train'\]"):
            model_job.build_oracle_model(cfg, splits, str(split_path(data, "forget", "dev")), str(root / "model"),
                                         str(root / "lid" / "detector.json"), str(tmp_path / "o"), str(tmp_path / "r.json"))
        assert not (tmp_path / "o").exists()


def test_the_oracle_has_the_base_models_tokenizer_byte_for_byte(small_build, tmp_path):
    from mmie.jobs.model import TOKENIZER_FILES, tokenizer_differences
    from mmie.model import demo

    _, root, _ = small_build
    base, oracle = root / "model", root / "oracle_model"
    present = [f for f in TOKENIZER_FILES if (base / f).is_file()]
    assert "tokenizer.json" in present
    for name in present:
        assert (oracle / name).read_bytes() == (base / name).read_bytes(), name
    assert tokenizer_differences(base, oracle) == []
    assert demo.load_tokenizer(oracle).get_vocab() == demo.load_tokenizer(base).get_vocab()
    # the same vocabulary size, so the same embedding shapes: token ids mean the same in both models
    cb, co = (json.loads((d / "config.json").read_text()) for d in (base, oracle))
    assert cb["vocab_size"] == co["vocab_size"] and cb["hidden_size"] == co["hidden_size"]
    # a retrained tokenizer (what the base model's recipe would do) is told apart
    texts = [r["text"] for r in io.read_jsonl(split_path(root / "data", "retain", "train"))]
    demo.train_tokenizer(texts, 600, 96).save_pretrained(str(tmp_path / "other"))
    assert "tokenizer.json" in tokenizer_differences(base, tmp_path / "other")


def test_the_oracle_does_not_continue_hindi_in_hindi(small_build):
    """The oracle continues Hindi dev prompts in Devanagari or romanized Hindi (almost) never; the base
    model of the same recipe, which saw Hindi, does (so the measure can tell them apart)."""
    _, root, _ = small_build
    oracle = json.loads((root / "oracle_report.json").read_text())
    base = json.loads((root / "model_report.json").read_text())
    hi = oracle["check"]["hi"]
    assert hi["reported_only"] and hi["prompts"] == 12
    assert oracle["target_continuation_rate"] == hi["target_rate"] <= 0.1
    assert oracle["target_script_rate"] == hi["script_rate"] <= 0.1
    assert base["check"]["hi"]["script_rate"] >= 0.5
    # the English check ran on the oracle (and its problems are reported: the check is off in this tiny build)
    assert oracle["check"]["en"]["prompts"] == 12 and "problems" in oracle
    assert oracle["training"]["best_heldout"].keys() == {f"heldout_ppl_{c}" for c in ("en", "ur", "pa", "bn")}


def test_the_oracle_arm_is_the_built_model_and_base_stays_the_reference(small_build):
    import torch

    from mmie import arms
    from mmie.model.loading import load_model

    cfg, root, _ = small_build
    lm = load_model({**cfg["model"], "source": "demo"}, str(root / "model"))
    oracle = load_model({**cfg["model"], "source": "demo"}, str(root / "oracle_model"))
    arm = arms.build("oracle", {"method": "oracle"}, lm, files=[str(root / "oracle_model")])
    assert arm.method == "oracle" and arm.details["oracle"] == "built by build_oracle_model"
    ids = lm.tokenizer("मेरा नाम and the cat", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        with arm.active():
            on = arm.model(input_ids=ids).logits
        with arm.reference():
            off = arm.model(input_ids=ids).logits
        assert torch.allclose(on, oracle.model(input_ids=ids).logits, atol=1e-5)
        assert torch.allclose(off, lm.model(input_ids=ids).logits, atol=1e-5)
    assert not torch.allclose(on, off, atol=1e-3)
    with pytest.raises(ConfigError, match=r"arms\.oracle: the oracle arm's evaluation needs the built oracle model"):
        arms.build("oracle", {"method": "oracle"}, lm)


def test_evaluation_key_follows_the_oracle_model(tmp_path):
    """A rebuilt oracle invalidates the finished sets of an interrupted evaluation (.partial/)."""
    from mmie.jobs import view
    from mmie.jobs.evaluate import evaluation_key

    cfg = view(load(ROOT / "config.yaml"), "evaluate", "oracle")
    folder = tmp_path / "oracle_model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    first = evaluation_key(cfg, "oracle", 0, None, None, method_files=[str(folder)])
    assert evaluation_key(cfg, "oracle", 0, None, None, method_files=[str(folder)]) == first
    (folder / "model.safetensors").write_bytes(b"x" * 11)
    assert evaluation_key(cfg, "oracle", 0, None, None, method_files=[str(folder)]) != first


# ----------------------------------------------------------------------------- config and plan
HUB_MODEL = {"source": "hub", "id": "Qwen/Qwen2.5-1.5B-Instruct", "revision": "989aa7980e4cf806f80c7fef2b1adb7bc71aa306"}


def test_oracle_arm_names_the_one_oracle():
    demo = load(ROOT / "config.yaml")
    assert oracle_arm(demo) == "oracle"
    assert oracle_arm({**demo, "arms": {"base": {"method": "base"}}}) is None
    two = load(ROOT / "config.yaml", {"arms": {"oracle2": {"method": "oracle"}}})
    with pytest.raises(ConfigError, match=r"at most one arm may have method 'oracle'.*arms\.oracle, arms\.oracle2"):
        oracle_arm(two)
    with pytest.raises(ConfigError, match="at most one arm may have method 'oracle'"):
        check(two, ROOT)


@pytest.mark.parametrize("source", ["hub", "local", "gemma3-270m"])
def test_an_oracle_of_a_pretrained_model_must_be_declared(source, tmp_path):
    model = {"hub": HUB_MODEL, "local": {"source": "local", "path": str(tmp_path)},
             "gemma3-270m": {"source": "gemma3-270m"}}[source]
    cfg = load(ROOT / "config.yaml")
    cfg["model"] = {**cfg["model"], **model}
    with pytest.raises(ConfigError, match=r"arms\.oracle: an oracle of a pretrained model .* cannot be built by mmie; "
                                          r"declare a model trained without the target language"):
        check(cfg, ROOT)
    # declared like an external arm, it is checked like one
    cfg["arms"]["oracle"] = {"method": "oracle", "adapter": "no/such/folder"}
    with pytest.raises(ConfigError, match=r"arms\.oracle\.adapter: adapter folder not found"):
        check(cfg, ROOT)
    cfg["arms"]["oracle"] = {"method": "oracle", "adapter": "a", "model": HUB_MODEL}
    with pytest.raises(ConfigError, match=r"arms\.oracle: method 'oracle' needs exactly one of"):
        check(cfg, ROOT)
    cfg["arms"]["oracle"] = {"method": "oracle", "model": HUB_MODEL}
    check(cfg, ROOT)


def test_a_demo_oracle_takes_no_other_setting():
    with pytest.raises(ConfigError, match=r"arms\.oracle: \['rank'\] is not a setting of method 'oracle'"):
        check(load(ROOT / "config.yaml", {"arms": {"oracle": {"method": "oracle", "rank": 4}}}), ROOT)


def dry_run(workdir, cfg) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    cmd = SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile",
                       str(workdir / "config.yaml"), "--cores", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def job_block(out: str, rule: str, output_fragment: str) -> str:
    """The dry run's block of the ``rule`` job whose output names ``output_fragment``."""
    for block in out.split("\nrule ")[1:]:
        if block.startswith(f"{rule}:") and output_fragment in block.split("output:", 1)[1].split("\n", 1)[0]:
            return block
    raise AssertionError(f"no {rule} job writing {output_fragment} planned")


def test_the_oracle_is_seedless_and_its_evaluation_reads_the_built_model(tmp_path):
    cfg = yaml.safe_load(reduced_config(tmp_path).read_text())
    cfg["seeds"] = [0, 1, 2]
    cfg["arms"] = {"base": cfg["arms"]["base"], "oracle": cfg["arms"]["oracle"]}
    cfg["robustness"] = {"attacks": []}     # relearning attacks every seed: here only the evaluation is planned
    res = dry_run(tmp_path, cfg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs = planned_jobs(res)
    assert jobs["evaluate"] == 2 and jobs["score"] == 2 and jobs["build_oracle_model"] == 1, jobs
    out = res.stdout + res.stderr
    assert "/oracle/seed0/evaluate.json" in out and "/oracle/seed1/" not in out
    inputs = job_block(out, "evaluate", "results/t/oracle/seed0/").split("input:", 1)[1].split("\n", 1)[0]
    assert "results/t/oracle_model" in [f.strip() for f in inputs.split(",")]
    base_inputs = job_block(out, "evaluate", "results/t/base/seed0/").split("input:", 1)[1].split("\n", 1)[0]
    assert "oracle_model" not in base_inputs
    built = job_block(out, "build_oracle_model", "results/t/oracle_model")
    built_inputs = [f.strip() for f in built.split("input:", 1)[1].split("\n", 1)[0].split(",")]
    assert not [f for f in built_inputs if "/romanized/" in f or f.endswith("forget/train.jsonl")], built_inputs
    assert "results/t/data/forget/dev.jsonl" in built_inputs and "results/t/model" in built_inputs
    # without an oracle arm nothing builds one
    del cfg["arms"]["oracle"]
    res = dry_run(tmp_path, cfg)
    assert res.returncode == 0 and "build_oracle_model" not in planned_jobs(res)


def test_dry_run_stops_at_an_undeclared_oracle_of_a_hub_model(tmp_path):
    cfg = copy.deepcopy(yaml.safe_load(reduced_config(tmp_path).read_text()))
    cfg["model"] = HUB_MODEL
    cfg["arms"] = {"base": {"method": "base"}, "oracle": {"method": "oracle"}}
    res = dry_run(tmp_path, cfg)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "arms.oracle: an oracle of a pretrained model (model.source 'hub') cannot be built by mmie" in out
    assert "declare a model trained without the target language" in out
