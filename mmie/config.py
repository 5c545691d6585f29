"""Reading the (already schema-validated) config: the grid, the evaluation sets, and the checks a
schema cannot express. Light: no torch. Used by rules/common.smk and by the rule scripts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmie.errors import ConfigError
from mmie.stats.sets import SetInfo

FIXED_SETS = ("forget", "retain", "romanized", "mixed", "adversarial", "comprehension", "yes_no")


def eval_sets(config: Mapping) -> list[SetInfo]:
    """Evaluation sets in report order (docs/method.md §11 names)."""
    lang = config["languages"]
    target, retain = lang["target"]["code"], lang["retain"]["code"]
    sets = [SetInfo("forget", "forget", target), SetInfo("retain", "retain", retain),
            SetInfo("romanized", "romanized", f"{target}_rom")]
    data = config["data"]
    if data.get("mixed"):
        sets.append(SetInfo("mixed", "prompts", None))
    if data.get("adversarial"):
        sets.append(SetInfo("adversarial", "prompts", None))
    for code in lang.get("neighbours", {}):
        sets.append(SetInfo(code, "neighbour", code))
    if config["eval"]["comprehension"]["enabled"] and data.get("translations"):
        sets.append(SetInfo("comprehension", "comprehension", retain))
    if data.get("yes_no"):
        sets.append(SetInfo("yes_no", "yes_no", None))
    return sets


def set_names(config: Mapping) -> list[str]:
    return [s.name for s in eval_sets(config)]


# the prefix of the set under which the statistics see an lm-eval task of utility.tasks (mmie.report.utility.records)
UTILITY_SET_PREFIX = "utility:"


def utility_set(task: str) -> str:
    """The set under which the statistics see lm-eval task ``task`` (``utility:<task>``)."""
    return f"{UTILITY_SET_PREFIX}{task}"


def utility_sets(config: Mapping) -> list[str]:
    """The sets the statistics see from the utility jobs, one per task of ``utility.tasks``."""
    return [utility_set(t) for t in config.get("utility", {}).get("tasks", [])]


def set_info(config: Mapping, name: str) -> SetInfo:
    for s in eval_sets(config):
        if s.name == name:
            return s
    raise ConfigError(f"unknown evaluation set {name!r}; configured sets: {set_names(config)}")


def is_seeded(config: Mapping, arm: str) -> bool:
    """Whether an arm's outputs depend on the seed: trained arms, seeded methods (the random-gate
    control draws its features from the seed), any arm sitting ``on:`` a trained arm, and every arm
    when generation samples (``generation.do_sample``). Every other arm is deterministic given the
    model and the data, so its seeds would be copies of one run."""
    from mmie.arms.methods import of

    spec, declared = config["arms"][arm], of(config, arm)
    return declared.trains or declared.seeded or bool(spec.get("on")) or bool(config["generation"]["do_sample"])


def arm_groups(config: Mapping) -> dict[str, list[str]]:
    """The workflow's arm lists, from the method declarations (``mmie/arms/methods``): ``trained``
    (a train job per seed), ``layer_arms`` (read the layer selection), ``sae`` (need each selected
    layer's SAE and features), ``sweep`` (a dose-response sweep: sweep methods not sitting on a trained arm)."""
    from mmie.arms.methods import of

    arms = config["arms"]
    declared = {a: of(config, a) for a in arms}
    return {
        "arms": list(arms),
        "trained": [a for a in arms if declared[a].trains],
        "layer_arms": [a for a in arms if declared[a].needs_selection(arms[a])],
        "sae": [a for a in arms if "sae" in declared[a].layer_assets],
        "sweep": [a for a in arms if declared[a].sweep and not arms[a].get("on")],
    }


def tuned_arms(config: Mapping) -> list[str]:
    """The trained arms with a ``train.tune`` grid (rule tune: one job each, before their train jobs)."""
    return [a for a in arm_groups(config)["trained"] if (config["arms"][a].get("train") or {}).get("tune")]


def oracle_arm(config: Mapping) -> str | None:
    """The arm whose method is ``oracle`` (the model that never learned the target language: the
    reference of membership inference), or None; ConfigError when several arms are oracles."""
    found = [a for a, spec in config["arms"].items() if spec["method"] == "oracle"]
    if len(found) > 1:
        raise ConfigError(f"arms: at most one arm may have method 'oracle' (the model that never learned the target "
                          f"language); {', '.join(f'arms.{a}' for a in found)} all do")
    return found[0] if found else None


def arm_seeds(config: Mapping, arm: str) -> list[int]:
    """The seeds an arm is evaluated with: every configured seed for a seeded arm, the first
    configured seed only for a seed-independent one (evaluated once, reported as one run)."""
    seeds = [int(s) for s in config["seeds"]]
    return seeds if is_seeded(config, arm) else seeds[:1]


def unevaluated_reason(config: Mapping, set_name: str) -> str:
    """Why a known set is not part of this run (for a gate on it)."""
    why = {"mixed": "data.mixed is not set", "adversarial": "data.adversarial is not set",
           "yes_no": "data.yes_no is not set", "comprehension": "data.translations is not set or eval.comprehension.enabled is false",
           "neighbours": "languages.neighbours is empty"}
    return why.get(set_name, f"no evaluation set named {set_name!r} is configured")


def default_gates() -> list[dict]:
    """The gates config/schema.yaml fills in when a config sets no ``gates``."""
    import yaml

    with open(SCHEMA, encoding="utf-8") as fh:
        return yaml.safe_load(fh)["properties"]["gates"]["default"]


def gates_not_configured(config: Mapping) -> dict[str, str]:
    """Default gates follow the configured sets: a gate of the schema's defaults (same name, metric and
    set) on a set this study does not configure (no data.mixed, no neighbours, ...) is not part of the
    study — gate name -> why, reported as "not configured" and left out of the decision. A gate the
    config writes itself on such a set is different: it fails as "not evaluated" (``stats.gates.decide``)."""
    sets = set(set_names(config))
    if config["languages"].get("neighbours"):
        sets.add("neighbours")
    defaults = {(g["name"], g["metric"], g["set"]) for g in default_gates()}
    return {g["name"]: f"{unevaluated_reason(config, g['set'])}; the default gate {g['name']!r} "
                       f"follows the configured sets"
            for g in config.get("gates", []) if g["set"] not in sets and (g["name"], g["metric"], g["set"]) in defaults}


def check_gates(config: Mapping) -> None:
    """Every gate names a known set and a metric that exists on it; names are unique. A gate on a set
    this run does not evaluate is allowed here and fails at the statistics step as "not evaluated" (a
    default gate on such a set is "not configured" there instead: ``gates_not_configured``)."""
    from mmie.stats.gates import METRIC_SET_KINDS, gateable

    lang = config["languages"]
    neighbours = list(lang.get("neighbours", {}))
    known_sets = [*FIXED_SETS, *neighbours, "neighbours"]
    target = lang["target"]["code"]
    labels = sorted({target, f"{target}_rom", lang["retain"]["code"], "und", "noise", *neighbours})
    kinds = {"forget": "forget", "retain": "retain", "comprehension": "comprehension", "yes_no": "yes_no",
             "neighbours": "neighbour", **{c: "neighbour" for c in neighbours}}
    tasks = list(config.get("utility", {}).get("tasks", []))
    seen = set()
    for i, g in enumerate(config.get("gates", [])):
        where = f"gates[{i}] ({g['name']!r})"
        if g["name"] in seen:
            raise ConfigError(f"{where}: gate names must be unique; {g['name']!r} is used twice")
        seen.add(g["name"])
        utility = g["set"].startswith(UTILITY_SET_PREFIX)   # an lm-eval task: its metrics are lm-eval's
        if utility:
            task = g["set"].removeprefix(UTILITY_SET_PREFIX)
            if task not in tasks:
                raise ConfigError(f"{where}: set {g['set']!r} is lm-eval task {task!r}, which utility.tasks does not "
                                  f"run (utility.tasks: {tasks}); add it there or gate one of "
                                  f"{utility_sets(config)}")
            if not re.fullmatch(r"[A-Za-z_][\w.-]*", g["metric"]):
                raise ConfigError(f"{where}: metric {g['metric']!r} is not an lm-eval metric name (e.g. acc, "
                                  f"acc_norm, exact_match: a mean over documents, unfiltered)")
        elif g["set"] not in known_sets:
            raise ConfigError(f"{where}: unknown set {g['set']!r}; known sets: {known_sets}, or "
                              f"'{UTILITY_SET_PREFIX}<task>' for a task of utility.tasks")
        if not utility and not gateable(g["metric"], labels):
            raise ConfigError(f"{where}: unknown metric {g['metric']!r}; gateable metrics are the per-prompt "
                              f"metrics of docs/method.md §11 (e.g. es, target_rate, ppl, gen_ppl_base, empty_share, "
                              f"repetitive_share, own_language_rate, mia_auc) and lang_share_<label> for {labels}")
        allowed = None if utility else METRIC_SET_KINDS.get(g["metric"])
        if allowed and kinds.get(g["set"]) not in allowed:
            raise ConfigError(f"{where}: metric {g['metric']!r} is only computed on {'/'.join(allowed)} sets, "
                              f"not on {g['set']!r}")
        if g["direction"] == "within" and g["relative"] != "delta":
            raise ConfigError(f"{where}: direction 'within' tests |arm − reference| ≤ threshold; set relative: delta")
        if g.get("floor") is not None and not (g["relative"] == "ratio" and g["direction"] == "<="):
            raise ConfigError(f"{where}: 'floor' applies to ratio gates with direction '<=' only (the threshold is "
                              f"max(threshold x reference, floor))")
        if g.get("reference", "base") == "oracle" and oracle_arm(config) is None and g.get("fallback") is None:
            raise ConfigError(f"{where}: the gate compares with the oracle arm, but the study has none; add an arm "
                              f"with method 'oracle' or set the gate's 'fallback' (e.g. 0.5 for an AUC)")


def raw_data_files(config: Mapping) -> dict[str, str]:
    """role -> raw file path, for every configured input file."""
    data = config["data"]
    files = {role: data[role] for role in ("forget", "retain", "forget_romanized", "mixed", "adversarial",
                                             "lid_check", "lid_audit", "yes_no", "gibberish", "translations") if data.get(role)}
    for code, path in data.get("neighbours", {}).items():
        files[f"neighbour_{code}"] = path
    return files


def check(config: Mapping, workdir: str | Path = ".") -> None:
    """Consistency checks beyond the schema; raised at `snakemake -n` time with the key named."""
    workdir = Path(workdir)
    lang = config["languages"]
    codes = [lang["target"]["code"], lang["retain"]["code"], *lang.get("neighbours", {})]
    if len(set(codes)) != len(codes):
        raise ConfigError(f"languages: codes must be distinct, got {codes}")
    names = set(lang.get("neighbours", {}))
    files = set(config["data"].get("neighbours", {}))
    if names != files:
        raise ConfigError(f"languages.neighbours {sorted(names)} and data.neighbours {sorted(files)} must name "
                          f"the same languages")
    if lang["target"]["script"] == "latin":
        raise ConfigError("languages.target.script is 'latin': mmie's language ID tells a target from its romanized "
                          "form (transliterated from the target's own script), so the target must be written in a "
                          "non-Latin script (devanagari, bengali, gurmukhi, gujarati, arabic, cyrillic, greek, han)")
    if set(names) & set(FIXED_SETS):
        raise ConfigError(f"a neighbour code may not be one of the set names {FIXED_SETS}")
    for role, path in raw_data_files(config).items():
        key = f"data.neighbours.{role[len('neighbour_'):]}" if role.startswith("neighbour_") else f"data.{role}"
        if not (workdir / path).is_file():
            raise ConfigError(f"{key}: file not found: {path} (relative paths are relative to the working directory, snakemake -d)")
    split = config["data"]["split"]
    total = split["train"] + split["dev"] + split["test"] + split["holdout"]
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"data.split fractions must sum to 1, got {total}")
    model = config["model"]
    if model["source"] == "hub" and not (model.get("id") and model.get("revision")):
        raise ConfigError("model.source is 'hub': set model.id and a pinned model.revision")
    if model["source"] == "local" and not model.get("path"):
        raise ConfigError("model.source is 'local': set model.path to a Hugging Face model folder")
    if config["judge"]["enabled"]:
        from mmie.lang.judge import api_key

        api_key()  # raises ConfigError naming the variables when no key is set
    for arm, spec in config["arms"].items():
        check_arm(config, arm, spec, workdir)
    oracle_arm(config)   # at most one
    if "base" not in config["arms"] or config["arms"]["base"]["method"] != "base":
        raise ConfigError("arms: an arm named 'base' with method 'base' is required (every comparison is against it)")
    check_gates(config)
    folder = (config.get("utility") or {}).get("include_path")
    if folder and not (workdir / folder).is_dir():
        raise ConfigError(f"utility.include_path: folder not found: {folder} (the folder of your own lm-eval task "
                          f"YAMLs; relative paths are relative to the working directory, snakemake -d)")


def validate_arm(arm: str, spec: dict) -> None:
    """An arm's settings against its method's declared settings (``mmie/arms/methods/<method>.py``,
    ``Setting``): the method exists, every key is one of its settings, every value fits the setting's
    schema. A ConfigError names ``arms.<arm>.<key>``. A key set to null counts as left out."""
    import jsonschema

    from mmie.arms.method import RESERVED
    from mmie.arms.methods import method

    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", arm):
        raise ConfigError(f"arms.{arm}: arm names may use letters, digits and _ . + - only")
    declared = method(spec["method"], f"arms.{arm}.method")
    extra = sorted(k for k, v in spec.items() if v is not None and k not in RESERVED + declared.keys)
    if extra:
        takes = ", ".join(declared.keys) or "no settings besides method"
        raise ConfigError(f"arms.{arm}: {extra} {'is' if len(extra) == 1 else 'are'} not a setting of method "
                          f"{declared.name!r} (it takes: {takes})")
    given = {k: v for k, v in spec.items() if v is not None}
    errors = sorted(jsonschema.Draft202012Validator(declared.schema()).iter_errors(given),
                    key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        path = [str(p) for p in error.absolute_path]
        about = f"; {declared.setting(path[0]).description}" if path and path[0] in declared.keys else ""
        raise ConfigError(f"{'.'.join(['arms', arm, *path])}: {error.message} (method {declared.name!r}{about})")


def check_arm(config: Mapping, arm: str, spec: dict, workdir: Path) -> None:
    """An arm's settings against its method's declaration (``mmie/arms/methods/<method>.py``): the
    declared settings (``validate_arm``), then the method's own check."""
    from mmie.arms.methods import method

    validate_arm(arm, spec)
    declared = method(spec["method"], f"arms.{arm}.method")
    if declared.check is not None:
        declared.check(arm, spec, config, workdir)
    if spec.get("on") is not None:
        from mmie.arms import base_arm

        base_arm(config, arm)  # the arm it sits on must be a trained arm of this config
    from mmie.arms.tuning import check as check_tuning

    check_tuning(arm, spec)   # arms.<arm>.train.tune: a trained arm, a grid of at least two points


def with_workflow_on_path(basedir: str) -> str:
    """PYTHONPATH with the workflow's folder first (jobs in a conda environment of envs/ import mmie
    from there; the environment installs the dependencies only)."""
    import os

    return os.pathsep.join(p for p in (str(basedir), os.environ.get("PYTHONPATH")) if p)


SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


#: config keys that were renamed: old dotted key -> (new dotted key, why)
RENAMED = {
    "resources.gpu_mem_mb": ("resources.model_job_mem_mb", "it is the host memory of a model job, not GPU memory"),
    "resources.cpu_mem_mb": ("resources.light_job_mem_mb", "it is the host memory of a light job"),
}


#: the keys that make a study (config/schema.yaml requires them and has no default for them; a lone
#: ``experiment`` renames a demo run)
STUDY_KEYS = ("languages", "data", "arms")


def with_demo(config: dict, demo: str | Path) -> bool:
    """The demo as the base of a configuration that names no study: when ``config`` (what the command line
    gave: --configfile files and --config values, merged by Snakemake) sets none of ``STUDY_KEYS``, it
    becomes the demo file ``demo`` with those values on top (Snakemake's own deep merge,
    ``snakemake.utils.update_config``), in place. A study config is left alone: nothing of the demo leaks
    into it. Returns whether the demo was used."""
    if any(key in config for key in STUDY_KEYS):
        return False
    import yaml
    from snakemake.utils import update_config

    path = Path(demo)
    if not path.is_file():
        raise ConfigError(f"no study config given (--configfile) and no demo config {path} in the working directory "
                          f"{Path.cwd()}: pass --configfile your.yaml, or run from the repository (snakemake -d)")
    with open(path, encoding="utf-8") as fh:
        merged = yaml.safe_load(fh)
    update_config(merged, dict(config))
    config.clear()
    config.update(merged)
    return True


def lookup(config: Mapping, key: str) -> Any:
    """The value at a dotted key (``"lid.romanization"``); None where a part is missing."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def refuse_renamed(config: dict) -> None:
    """A config that sets a renamed key fails with the new name (before the schema, whose own message
    would only call the old key unexpected)."""
    for old, (new, why) in RENAMED.items():
        section, key = old.rsplit(".", 1)
        node = lookup(config, section)
        if isinstance(node, Mapping) and key in node:
            raise ConfigError(f"{old} was renamed {new} ({why}): rename the key in your config")


def load(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config (safe_load), apply overrides, validate against the schema with defaults filled
    in — the same validation Snakemake applies in rules/common.smk. For tests and tools."""
    import yaml
    from snakemake.utils import validate

    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    if overrides:
        config = deep_update(config, overrides)
    refuse_renamed(config)
    validate(config, str(SCHEMA), set_default=True)
    for arm, spec in config["arms"].items():
        validate_arm(arm, spec)   # the settings each method declares (the schema file has no per-method keys)
    return config


def deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
