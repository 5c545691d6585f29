"""Issue 16, points 4 and 5: a job sees only the config sections it declares (``@job`` in
mmie/jobs/), that one declaration is both its rule's rerun trigger and its provenance's
``config_section``, and no library code rebuilds a path a rule declares."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from mmie import jobs, provenance
from mmie.jobs import UndeclaredConfig, settings, view


# ----------------------------------------------------------------------------- (a) the view
def test_a_job_reading_an_undeclared_section_raises_naming_job_and_key(demo_config):
    cfg = view(demo_config, "fit_lid")
    assert cfg["lid"] == demo_config["lid"] and cfg["languages"] == demo_config["languages"]
    with pytest.raises(UndeclaredConfig, match=r"job 'fit_lid' read config key 'model'.*mmie/jobs/"):
        cfg["model"]
    with pytest.raises(UndeclaredConfig, match=r"job 'fit_lid' read config key 'data.forget'"):
        cfg["data"].get("forget")   # get and `in` read too: no silent default (fit_lid declares data.lid_audit)
    with pytest.raises(UndeclaredConfig, match=r"job 'fit_lid' read config key 'judge'"):
        cfg.get("judge")
    with pytest.raises(UndeclaredConfig, match=r"job 'fit_lid' read config key 'eval'"):
        "eval" in cfg  # noqa: B015
    # a dotted declaration opens one key of a section, not its neighbours
    cfg = view(demo_config, "prepare_data")
    assert cfg["lid"]["romanization"] == demo_config["lid"]["romanization"]
    with pytest.raises(UndeclaredConfig, match=r"job 'prepare_data' read config key 'lid.langid_weight'"):
        cfg["lid"]["langid_weight"]
    # an arm job sees its arm and the arm it sits on, not the others
    arms = {"base": {"method": "base"}, "lora": {"method": "lora", "rank": 4},
            "gate": {"method": "sae_gate", "on": "lora"}, "prompt": {"method": "prompt", "instruction": "x"}}
    cfg = view({**demo_config, "arms": arms}, "evaluate", "gate")
    assert cfg["arms"]["gate"] == arms["gate"] and cfg["arms"]["lora"] == arms["lora"]
    with pytest.raises(UndeclaredConfig, match=r"job 'evaluate' read config key 'arms.prompt'"):
        cfg["arms"]["prompt"]
    with pytest.raises(UndeclaredConfig, match=r"job 'evaluate' read config key 'stats'"):
        cfg["stats"]


def test_declarations_are_normalized():
    """A section declared whole subsumes its dotted keys (e.g. evaluate's ``eval`` and
    ``eval.comprehension`` from ``EVAL_SETS``): each value is tracked and recorded once."""
    declared = jobs.declarations()
    assert jobs.normalized(["data", "languages", "data.mixed", "languages", "eval.comprehension"]) == (
        "data", "languages", "eval.comprehension")
    for name, d in declared.items():
        assert d.sections == jobs.normalized(d.sections), name
    assert declared["prepare_data"].sections == ("data", "languages", "eval", "lid.romanization")


def test_the_view_is_read_only_and_a_copy(demo_config):
    cfg = view(demo_config, "fit_lid")
    with pytest.raises(TypeError):
        cfg["lid"] = {}
    cfg["lid"]["romanization"] = "changed"   # the job's copy, not the caller's config
    assert demo_config["lid"]["romanization"] != "changed"


def test_a_job_function_given_the_whole_config_reads_through_its_view(demo_config, tmp_path, monkeypatch):
    """The decorator turns the config dict into the job's view: a library function the job calls
    that reads a section the job does not declare fails, naming the job and the key."""
    import pandas as pd

    import mmie.config
    import mmie.report.aggregate as agg
    from mmie.jobs import report

    monkeypatch.setattr(agg, "collect", lambda paths: (pd.DataFrame({"x": [1]}), pd.DataFrame()))
    monkeypatch.setattr(mmie.config, "set_names", lambda config: config["stats"])
    with pytest.raises(UndeclaredConfig, match=r"job 'aggregate' read config key 'stats'"):
        report.aggregate(demo_config, [], *(str(tmp_path / f) for f in "abcd"))


# ----------------------------------------------------------------------------- (b) one declaration
RULE = re.compile(r"^\s*(?:(?:rule|checkpoint) (\w+)|use rule (\w+) as (\w+) with):", re.M)


def rule_blocks() -> dict[str, str]:
    """Each rule's text; a rule derived with ``use rule A as B with:`` gets its own block followed by
    A's (what it does not override, such as the script, it inherits)."""
    out, parents = {}, {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1) or m.group(3), m.group(2)) for m in RULE.finditer(text)]
        ends = [start for start, _, _ in starts[1:]] + [len(text)]
        for (start, name, parent), end in zip(starts, ends[:len(starts)], strict=True):
            out[name] = text[start:end]
            if parent:
                parents[name] = parent
    for name, parent in parents.items():
        out[name] += out[parent]
    return out


def test_every_rule_with_a_job_tracks_exactly_its_declaration():
    """Each rule that runs a script calls one declared job function with its own view
    (``cfg_of(snakemake)``), and its rerun trigger is that job's declaration (``job_settings``): the
    two cannot list different sections."""
    declared = jobs.declarations()
    blocks = rule_blocks()
    with_script = {name: b for name, b in blocks.items() if "script:" in b}
    assert sorted(with_script) == sorted(declared), "every rule with a script has a declared job and back"
    for name, block in with_script.items():
        assert re.search(rf'^\s*settings=job_settings\("{name}"\),$', block, re.M), name
        script = re.search(r'"\.\./(scripts/\w+\.py)"', block).group(1)
        code = (ROOT / script).read_text()
        module = declared[name].module.rsplit(".", 1)[1]
        assert re.search(rf"\b{module}\.{name}\(cfg_of\(snakemake\)", code), (name, script)
    common = (ROOT / "rules" / "common.smk").read_text()
    assert "def settings(" not in common and "settings(" not in "".join(
        re.sub(r"job_settings\(|settings_json\(", "", b) for b in blocks.values())


def test_provenance_records_the_declared_sections(demo_config):
    """``config_section`` of every job's provenance is its rule's ``params: settings`` (the same
    values, parsed back), and ``config_hash`` stays the whole config's."""
    for rule, declared in jobs.declarations().items():
        arm = "lora" if declared.arm else None
        cfg = view(demo_config, rule, arm)
        block = provenance.build(cfg, rule=rule)
        assert block["config_section"] == json.loads(jobs.settings_json(demo_config, rule, arm)), rule
        assert block["config_hash"] == provenance.config_hash(demo_config)
        keys = set(declared.sections_of(demo_config)) | ({"arm"} if arm else set())
        assert set(block["config_section"]) == keys, rule
    # evaluate reads the arm it runs, not every arm, and everything that picks the evaluation sets
    section = settings(demo_config, "evaluate", "lora")
    assert "arms" not in section and section["arm"] == demo_config["arms"]["lora"]
    assert {"languages", "data.mixed", "data.yes_no", "eval", "gate", "deterministic"} <= set(section)


def test_a_conditional_section_is_read_and_tracked_only_when_its_condition_holds(demo_config):
    import copy

    off = copy.deepcopy(demo_config)
    off["layers"]["selection"]["judge_weight"] = 0.0
    on = copy.deepcopy(demo_config)
    on["layers"]["selection"]["judge_weight"] = 0.5
    assert "judge" not in settings(off, "select_layers") and settings(on, "select_layers")["judge"] == on["judge"]
    with pytest.raises(UndeclaredConfig, match=r"'judge.cache_dir'"):
        view(off, "select_layers")["judge"]["cache_dir"]
    assert view(on, "select_layers")["judge"]["cache_dir"] == on["judge"]["cache_dir"]


def test_declarations_import_no_heavy_library():
    """rules/common.smk imports the config helpers and every declaration at parse time (every job's
    re-parse on a cluster pays it): no model, table, plotting or transliteration library."""
    code = ("import sys, json, mmie.config, mmie.jobs as j; j.declarations(); "
            "print(json.dumps(sorted(m for m in ('torch', 'pandas', 'numpy', 'matplotlib', 'transformers', 'peft', "
            "'sklearn', 'indic_transliteration') if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout) == []


# ----------------------------------------------------------------------------- (c) paths declared once
# fragments of paths a rule declares (rules/common.smk, rules/*.smk); library code gets them from the
# rule's inputs and outputs instead
DECLARED_FRAGMENTS = [r'"sae" /', r"features/layer", r"directions\.safetensors", r'"eval_sets"',
                      r'/ "(forget|retain|romanized|neighbours)" /', r'"(train|dev|test|holdout)\.jsonl"',
                      r'"selection\.json"', r'"layers" /', r'"acts" /', r'"checkpoints" /',
                      r"\bread_split\(", r"\bsplit_path\("]   # a split file from a data folder
# the one place that maps split files (the declaration rules/common.smk uses), the writer of
# prepare_data's declared outputs, and a command-line tool that reads a finished results tree
ALLOWED = {"mmie/data/corpus.py": "split_path", "mmie/data/prepare.py": "writes prepare_data's outputs",
           "mmie/jobs/__init__.py": "splits_by_role: checks each declared split file round-trips through split_path",
           "mmie/report/demo_results.py": "reads a finished run (python -m mmie.report.demo_results)"}


def test_no_library_code_rebuilds_a_declared_path():
    found = []
    for path in sorted((ROOT / "mmie").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if code.strip().startswith(('"', "'")):   # docstrings
                continue
            found += [f"{rel}:{n}: {line.strip()}" for pat in DECLARED_FRAGMENTS if re.search(pat, code)]
    assert not found, "library code builds paths a rule declares:\n" + "\n".join(found)


def test_splits_by_role_maps_declared_paths_and_refuses_others(tmp_path):
    from mmie.data.corpus import split_paths

    data = tmp_path / "results" / "x" / "data"
    files = split_paths(data, ["forget", "forget_romanized", "neighbour_ur"], ["train", "dev"])
    mapped = jobs.splits_by_role(files)
    assert mapped[("neighbour_ur", "dev")] == str(data / "neighbours" / "ur" / "dev.jsonl")
    assert mapped[("forget_romanized", "train")] == str(data / "romanized" / "train.jsonl")
    with pytest.raises(ValueError, match="not a split file"):
        jobs.splits_by_role([str(data / "forget" / "other.jsonl")])
    with pytest.raises(ValueError, match=r"reads the retain/train split, which its rule does not declare"):
        jobs.read_declared_split(mapped, "retain", "train", "fit_lid")


def test_layer_assets_come_from_the_declared_inputs(tmp_path):
    from mmie.arms.edit_arms import LayerAssets
    from mmie.errors import ConfigError

    named = {"model": "m", "selection": str(tmp_path / "sel.json"), "sae3": str(tmp_path / "a"),
             "features3": str(tmp_path / "f3.json"), "directions5": str(tmp_path / "d5")}
    assets = LayerAssets.from_inputs(named)
    assert assets.sae_dir(3) == tmp_path / "a" and assets.features(3) == tmp_path / "f3.json"
    assert assets.directions(5) == tmp_path / "d5"
    with pytest.raises(ConfigError, match=r"layer 4's sae is not among the rule's declared layer assets"):
        assets.sae_dir(4)
    with pytest.raises(ConfigError, match="no 'selection' input"):
        LayerAssets.from_inputs({"sae3": "x"})


def test_model_and_checkpoint_are_read_from_the_rules_inputs_never_repeated_as_params():
    """A rule declares the model folder and the checkpoint once, as its named inputs ``model`` and
    ``checkpoint``; no param repeats them and no script reads them from the params."""
    for name, block in rule_blocks().items():
        params = re.search(r"^    params:\n((?:        .*\n)+)", block, re.M)
        text = params.group(1) if params else ""
        assert not re.search(r"\b(model_dir|checkpoint_dir)\w*\b|^\s*(model_dir|checkpoint)=", text, re.M), name
    for script in sorted((ROOT / "scripts").glob("*.py")):
        assert not re.search(r"params\.(model_dir|checkpoint)\b", script.read_text()), script


def test_an_empty_model_or_checkpoint_input_is_none():
    """An input function's ``[]`` (a hub model, an arm with no checkpoint) and an absent input are
    None; one path is that path; two are a miswired rule."""
    from mmie.jobs import optional_input

    assert optional_input({"model": []}, "model") is None and optional_input({}, "checkpoint") is None
    assert optional_input({"model": "results/x/model"}, "model") == "results/x/model"
    assert optional_input({"checkpoint": ["c/seed0"]}, "checkpoint") == "c/seed0"
    with pytest.raises(ValueError, match="one path or none"):
        optional_input({"model": ["a", "b"]}, "model")


def test_every_script_hands_itself_to_the_warm_server_first():
    """A script's first statement is ``delegate()`` (mmie/forkserver.py): anything before it would
    run twice (in the client, then again in the warm fork), and a script without it always starts cold."""
    for script in sorted((ROOT / "scripts").glob("*.py")):
        lines = [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert lines[:2] == ["from mmie.forkserver import delegate", "delegate()  # a warm process with torch "
                             "imported runs this script when one is up (mmie/forkserver.py)"], script
