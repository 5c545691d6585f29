"""Job functions, one module per rules file (rules/<name>.smk -> mmie/jobs/<name>.py); scripts/ call these.

Each job function declares the config sections it reads, next to it::

    @job("model", "generation", "eval", "gate", "deterministic", *EVAL_SETS, arm=True)
    def evaluate(cfg: JobConfig, arm_name: str, seed: int, files: EvaluateFiles): ...

That one declaration is

- what the job sees: its first argument is a read-only ``JobConfig`` view of exactly those sections
  (dotted keys such as ``"lid.romanization"`` allow one key of a section; ``arm=True`` adds the
  arm's settings and those of the arm it sits on, ``on:``). Reading anything else raises
  ``UndeclaredConfig`` naming the job and the key;
- the rule's rerun trigger: ``params: settings=job_settings("<rule>")`` in rules/*.smk
  (rules/common.smk) is ``settings(config, "<rule>", arm)`` as JSON;
- what its provenance records: ``provenance.build(cfg, ...)`` writes ``settings(...)`` as
  ``config_section`` (and the whole config's hash, computed when the view is made).

Light to import (rules/common.smk reads the declarations at parse time): no torch or pandas at
module level here or in the job modules.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmie.config import lookup
from mmie.errors import ConfigError

#: the job modules, one per rules file
MODULES = ("data", "model", "sae", "train", "evaluate", "robustness", "utility", "report")
#: what ``mmie.config.eval_sets`` (the evaluation sets and their order) reads
EVAL_SETS = ("languages", "data.mixed", "data.adversarial", "data.yes_no", "data.translations", "eval.comprehension")


class UndeclaredConfig(ConfigError):
    """A job read a config key its declaration (``@job(...)``) does not list."""


@dataclass(frozen=True)
class Job:
    rule: str                  # the rule (and job function) name
    sections: tuple[str, ...]  # config keys it reads (dotted: one key of a section)
    arm: bool                  # whether it reads the wildcard arm's settings
    module: str
    when: tuple = ()           # (key, condition): key is read only when the condition key's value is truthy

    def sections_of(self, config: Mapping) -> tuple[str, ...]:
        """The keys the job reads under ``config``: its sections and each ``when`` key whose condition holds."""
        return self.sections + tuple(k for k, cond in self.when if lookup(config, cond))


_JOBS: dict[str, Job] = {}


def job(*sections: str, arm: bool = False, rule: str | None = None, when: dict[str, str] | None = None):
    """Declare a job function's config sections (see the module doc). The decorated function takes
    the config (a dict or a ``JobConfig``) first; a dict is turned into this job's view, so nothing
    but the declared sections reaches it. An arm job takes the arm's name as ``arm_name``.
    ``when``: {key: condition key}: ``key`` is read (and tracked) only when the config's value at the
    condition key (itself a declared section) is truthy, e.g. the judge's settings only when layer
    selection weighs the judge in."""

    def wrap(fn):
        name = rule or fn.__name__
        if name in _JOBS:
            raise ValueError(f"job {name!r} is declared twice ({_JOBS[name].module} and {fn.__module__})")
        for key in (*sections, *(when or {})):
            if not key or any(not part for part in key.split(".")):
                raise ValueError(f"job {name!r}: bad config key {key!r}")
        declared = Job(name, normalized(sections), arm, fn.__module__, tuple((when or {}).items()))
        _JOBS[name] = declared
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(config, *args, **kwargs):
            arm_name = sig.bind_partial(config, *args, **kwargs).arguments.get("arm_name") if arm else None
            return fn(view(config, name, arm_name), *args, **kwargs)

        run.job = declared
        return run

    return wrap


def normalized(keys) -> tuple[str, ...]:
    """``keys`` without repeats and without a dotted key whose section is declared whole (in order)."""
    keys = list(dict.fromkeys(keys))
    return tuple(k for k in keys if not any(k.startswith(f"{other}.") for other in keys if other != k))


def declarations() -> dict[str, Job]:
    """Every job's declaration, by rule name (imports the job modules: light, no torch)."""
    for m in MODULES:
        importlib.import_module(f"mmie.jobs.{m}")
    return dict(_JOBS)


def declaration(rule: str) -> Job:
    jobs = declarations()
    if rule not in jobs:
        raise KeyError(f"no job function declares rule {rule!r} (mmie/jobs/*.py @job); declared: {sorted(jobs)}")
    return jobs[rule]


def _arm_specs(config: Mapping, rule: str, arm_name: str | None) -> dict:
    if arm_name is None:
        raise ValueError(f"job {rule!r} reads an arm's settings (arm=True) but was given no arm")
    arms = config["arms"]
    if arm_name not in arms:
        raise ConfigError(f"job {rule!r}: arm {arm_name!r} is not in the config's arms ({sorted(arms)})")
    spec = arms[arm_name]
    out = {"arm": spec}
    if spec.get("on"):
        out["on"] = arms[spec["on"]]
    return out


def settings(config: Mapping, rule: str, arm_name: str | None = None) -> dict:
    """The values of the sections ``rule``'s job declares (dotted keys as given), plus ``arm`` (and
    ``on``) for an arm job: the rule's rerun trigger and its provenance's ``config_section``."""
    declared = declaration(rule) if rule not in _JOBS else _JOBS[rule]
    out = {k: lookup(config, k) for k in declared.sections_of(config)}
    if declared.arm:
        out.update(_arm_specs(config, rule, arm_name))
    return out


def settings_json(config: Mapping, rule: str, arm_name: str | None = None) -> str:
    """``settings`` as the rule's ``params: settings`` value (canonical JSON)."""
    return json.dumps(settings(config, rule, arm_name), sort_keys=True, default=str)


def _allowed(config: Mapping, declared: Job, arm_name: str | None) -> dict:
    """The tree of readable keys: ``True`` is a whole subtree."""
    tree: dict = {}
    for key in declared.sections_of(config):
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is True:
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = True
    if declared.arm and tree.get("arms") is not True:
        specs = _arm_specs(config, declared.rule, arm_name)
        arms = tree.setdefault("arms", {})
        arms[arm_name] = True
        if "on" in specs:
            arms[config["arms"][arm_name]["on"]] = True
    return tree


class JobConfig(Mapping):
    """A read-only view of the config sections one job declares. ``cfg[key]`` of an undeclared key
    (also ``get`` and ``in``) raises ``UndeclaredConfig``; a declared key that the config lacks is a
    plain ``KeyError`` (``get`` returns its default). ``settings``: the declared values (provenance's
    ``config_section``); ``config_hash``: the whole config's hash; ``numerics``: the runner's numerics
    section (``mmie.numerics.describe``)."""

    def __init__(self, data: Mapping, allowed: dict, rule: str, where: str = "", *, settings: dict | None = None,
                 config_hash: str | None = None, numerics: dict | None = None) -> None:
        self._data, self._allowed, self._rule, self._where = data, allowed, rule, where
        self.settings, self.config_hash, self.numerics = settings, config_hash, numerics

    @property
    def rule(self) -> str:
        """The job (rule) this view belongs to."""
        return self._rule

    def _check(self, key) -> Any:
        rule = self._allowed.get(key)
        if rule is None:
            name = f"{self._where}{key}"
            readable = sorted(f"{self._where}{k}" for k in self._allowed)
            raise UndeclaredConfig(
                f"job {self._rule!r} read config key {name!r}, which its declaration does not list (it reads: "
                f"{readable}); add {name!r} to @job(...) of {self._rule} in mmie/jobs/ (that is also the rule's "
                f"rerun trigger and its provenance's config_section)")
        return rule

    def __getitem__(self, key):
        rule = self._check(key)
        value = self._data[key]
        if rule is True:
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"job {self._rule!r}: config key {self._where}{key} is not a section ({value!r})")
        return JobConfig(value, rule, self._rule, f"{self._where}{key}.")

    def get(self, key, default=None):
        self._check(key)
        return self[key] if key in self._data else default

    def __contains__(self, key) -> bool:
        self._check(key)
        return key in self._data

    def __iter__(self):
        return (k for k in self._data if k in self._allowed)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"JobConfig({self._rule!r}, {self._where or 'config'}: {sorted(self._allowed)})"


def view(config: Mapping, rule: str, arm_name: str | None = None) -> JobConfig:
    """The job ``rule``'s view of ``config`` (a copy: the job cannot change the caller's config).
    A view passed in again is returned as it is, when it is this job's."""
    if isinstance(config, JobConfig):
        if config._rule != rule:
            raise ConfigError(f"job {rule!r} was given the config view of job {config._rule!r}; pass the config")
        return config
    from mmie import provenance

    declared = _JOBS.get(rule) or declaration(rule)
    data = copy.deepcopy(dict(config))
    return JobConfig(data, _allowed(data, declared, arm_name), rule,
                     settings=settings(data, rule, arm_name), config_hash=provenance.config_hash(data),
                     numerics={"numerics": data["numerics"]} if "numerics" in data else {})


def cfg_of(snakemake, rule: str | None = None) -> JobConfig:
    """A rule script's job view: the rule's name and its ``arm`` wildcard, if any."""
    rule = rule or snakemake.rule
    return view(snakemake.config, rule, getattr(snakemake.wildcards, "arm", None))


# ----------------------------------------------------------------------------- declared paths
def optional_input(inputs: Mapping, name: str) -> str | None:
    """The path of a rule's named input that its input function may leave empty, or None: ``model``
    (no folder for a hub model, which is read from the Hugging Face cache) and ``checkpoint`` (none
    for an arm that is not trained and sits on no trained arm). ``inputs``: ``snakemake.input`` or a
    mapping of the same names; an absent name, ``None`` or an empty list is None."""
    value = inputs.get(name)
    if value is None or isinstance(value, str | Path):
        return str(value) if value else None
    paths = list(value)
    if len(paths) > 1:
        raise ValueError(f"the rule's {name!r} input is {paths}: one path or none expected (rules/*.smk)")
    return str(paths[0]) if paths else None


def splits_by_role(paths) -> dict[tuple[str, str], str]:
    """A rule's declared split files keyed by (role, part) (``mmie.data.corpus.split_path`` in
    reverse; each is checked to round-trip through it)."""
    from mmie.data.corpus import SPLITS, split_path

    out: dict[tuple[str, str], str] = {}
    for p in paths:
        path = Path(p)
        if path.parent.parent.name == "neighbours":
            role, data_dir = f"neighbour_{path.parent.name}", path.parents[2]
        else:
            role = "forget_romanized" if path.parent.name == "romanized" else path.parent.name
            data_dir = path.parents[1]
        if path.stem not in SPLITS or split_path(data_dir, role, path.stem) != path:
            raise ValueError(f"{p} is not a split file (<data>/<role>/<part>.jsonl); the rule's splits input is "
                             f"miswired (rules/*.smk)")
        out[role, path.stem] = str(p)
    return out


def read_declared_split(splits: Mapping[tuple[str, str], str], role: str, part: str, rule: str) -> list[str]:
    """The texts of a declared split file, in file order (an empty file is an error)."""
    from mmie import io
    from mmie.errors import DataError

    if (role, part) not in splits:
        raise ValueError(f"job {rule!r} reads the {role}/{part} split, which its rule does not declare as input "
                         f"(declared: {sorted('/'.join(k) for k in splits)}); add it to the rule's splits (rules/*.smk)")
    texts = [r["text"] for r in io.read_jsonl(splits[role, part])]
    if not texts:
        raise DataError(f"{splits[role, part]} is empty; rerun prepare_data (role {role}, split {part})")
    return texts
