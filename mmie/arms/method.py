"""The declaration of an arm method (docs/extending.md): everything the workflow, the config checks and
the jobs need to know about one method, in one place. Each method lives in its own module under
``mmie/arms/methods/`` and declares ``METHOD = Method(...)``; the registry (``mmie.arms.methods``)
finds it there. The arm's settings (``Setting``: name, JSON-schema type, default, description) and
so the arm schema (``mmie.arms.methods.arm_schema``) and config/README.md's arms table, the Snakemake
arm lists, checkpoint paths, the ``train`` rule, the layer assets an arm's evaluation needs and the
SLURM run time all derive from these fields.

Declarations are read when Snakemake parses the workflow, so a method module stays light: it imports
torch, peft or pyreft only inside the functions that need them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

# layer assets an arm's evaluation can need, per selected layer (paths: rules/common.smk ASSET_FILES)
ASSETS = ("sae", "features", "directions")


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


#: a setting without a fixed default (left out: the method decides, e.g. from the config's ``gate`` section)
NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class Setting:
    """One arm setting a method takes: ``arms.<arm>.<name>``. ``schema`` is its JSON schema (type and
    bounds; checked when the config is read, the error naming the arm and the key), ``default`` what an
    arm that leaves it out gets (``mmie.arms.resolve_spec``; ``NO_DEFAULT``: the method decides, and
    ``default_doc`` says how), ``description`` what it means (config/README.md's arms table)."""

    name: str
    schema: Mapping[str, Any]
    description: str
    default: Any = NO_DEFAULT
    default_doc: str = ""              # the default in words, where it is not a fixed value

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name) or self.name in RESERVED:
            raise ValueError(f"setting {self.name!r}: a lower-case identifier other than {RESERVED}")
        if "default" in self.schema:
            raise ValueError(f"setting {self.name}: the default goes in Setting.default, not in its schema")


#: the schema of a list of layer indices (``layers`` of the layer-based methods)
LAYERS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}

#: keys every arm has, whatever its method: its method and the train section (config/schema.yaml)
RESERVED = ("method", "train")


def never(spec: dict) -> bool:
    return False


def unless_own_layers(spec: dict) -> bool:
    """The arm reads the selected layers unless it sets its own ``layers``."""
    return not spec.get("layers")


@dataclass(frozen=True)
class BuildContext:
    """What a builder gets: the arm's name and resolved settings, the loaded model (``mmie.model.loading``),
    its checkpoint folder (trained arms, and gates that sit ``on:`` one), for edit arms the config,
    the seed and the layer assets (``mmie.arms.edit_arms.LayerAssets``), and the files its method
    declares (``Method.files``: the rule's ``method_files`` input, e.g. the oracle's built model)."""

    name: str
    spec: dict
    loaded: Any
    checkpoint: str | None = None
    config: Mapping[str, Any] | None = None
    seed: int = 0
    assets: Any = None
    files: tuple[str, ...] = ()        # the evaluation's inputs from the method's ``files`` (as the rule declares them)

    def trained_checkpoint(self) -> str:
        """The checkpoint folder a trained method loads; an error naming the arm when the job has none."""
        if not self.checkpoint:
            from mmie.errors import ConfigError

            raise ConfigError(f"arm {self.name} ({self.spec.get('method')}) is trained but its job was given no "
                              f"checkpoint: the rule's checkpoint input is miswired (rules/common.smk checkpoint_dir)")
        return str(self.checkpoint)


# The contracts of a method's functions (what the workflow calls, with what, and what it expects back).
class Builder(Protocol):
    def __call__(self, ctx: BuildContext) -> Any:
        """The arm (``mmie.arms.Arm``) on ``ctx.loaded``: its adapter loaded from ``ctx.checkpoint``
        (trained methods), its edits hooked (edit methods), or its system prompt (prompt-like)."""


class Creator(Protocol):
    def __call__(self, spec: dict, model: Any, layers: list[int] | None) -> Any:
        """A fresh, trainable adapter on ``model`` (called after seeding): ``parameters()``, ``active()``,
        ``reference()`` and ``save(folder)``; ``mmie.arms.lora_adapter.LoraAdapter`` is the model."""


class ObjectiveFactory(Protocol):
    def __call__(self, spec: dict, adapter: Any, forget: list[list[int]], pad_id: int, prefix: list[int],
                 seed: int) -> Any:
        """The method's own training objective (an ``mmie.arms.objectives.Objective``: ``spec``, ``totals``,
        ``terms``, ``record``), given the adapter and the forget train token ids; None in ``Method``
        means the arm's ``train.objective``."""


class Editor(Protocol):
    def __call__(self, config: Mapping[str, Any], spec: dict, model: Any, assets: Any, layer: int, fingerprint: str, seed: int,
                 alpha: float | None = None) -> Any:
        """The edit of one layer: ``(fn, details)`` with ``fn(hidden) -> hidden`` applied to the layer's
        output (``mmie.model.hooks.edit_layer_outputs``) and ``details`` recorded in the manifest."""


class Checker(Protocol):
    def __call__(self, arm: str, spec: dict, config: Mapping[str, Any], workdir: Any) -> None:
        """Raise ``ConfigError`` naming ``arms.<arm>.<key>`` when the arm's settings cannot work."""


class Files(Protocol):
    def __call__(self, spec: dict, built: dict) -> list[str]:
        """The evaluation's inputs besides the model (``built``: the models the workflow builds, by name)."""


@dataclass(frozen=True)
class Method:
    name: str
    summary: str                                   # one line: docs, error messages
    build: Builder                                 # the arm (mmie.arms.Arm) on a loaded model
    settings: tuple[Setting, ...] = ()             # arm settings it takes besides method and train
    description: str = ""                          # config/README.md's arms table (markdown; default: summary)
    trains: bool = False                           # a `train` job writes checkpoints/<arm>/seed<k>
    seeded: bool = False                           # outputs depend on the seed without training (random_gate)
    needs_selection: Callable[[dict], bool] = never   # reads layers/selection.json (given the arm's settings)
    layer_assets: tuple[str, ...] = ()             # what its evaluation needs per layer (ASSETS)
    sits_on: bool = False                          # may sit `on:` a trained arm (lora+sae_gate)
    sweep: bool = False                            # has a dose-response sweep on dev data (sweep_gate rule)
    sweep_controls: tuple[str, ...] = ()           # edit methods swept beside it, on the same layers (its controls)
    create: Creator | None = None                  # trained: create(spec, model, layers) -> a fresh adapter
    objective: ObjectiveFactory | None = None      # trained: its own objective; None: the arm's train.objective
    edit: Editor | None = None                     # edit arms: the edit of one layer (mmie.arms.edit_arms)
    check: Checker | None = None                   # check(arm, spec, config, workdir): ConfigError naming the key
    files: Files | None = None                     # files(spec, built): its evaluation's inputs besides the model
    #   (built: the models the workflow builds for arms, by name: rules/common.smk BUILT_MODELS)
    param_markers: tuple[str, ...] = ()            # names of its adapter parameters inside a model
    imports: tuple[str, ...] = ()                  # libraries its jobs import (start-up estimates, benchmarks/)
    train_minutes: int = 240                       # SLURM wall-clock limit of a train job (times the attempt)

    def __post_init__(self) -> None:
        unknown = set(self.layer_assets) - set(ASSETS)
        if unknown:
            raise ValueError(f"method {self.name}: unknown layer assets {sorted(unknown)}; known: {ASSETS}")
        if self.trains and self.create is None:
            raise ValueError(f"method {self.name}: a trained method needs `create`")
        if self.sweep_controls and not self.sweep:
            raise ValueError(f"method {self.name}: sweep_controls without sweep")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name}: settings declared twice: {sorted({n for n in names if names.count(n) > 1})}")

    @property
    def keys(self) -> tuple[str, ...]:
        """The names of the arm settings it takes (besides method and train)."""
        return tuple(s.name for s in self.settings)

    @property
    def defaults(self) -> dict[str, Any]:
        """The fixed defaults of its settings (``mmie.arms.resolve_spec`` fills them in)."""
        return {s.name: s.default for s in self.settings if s.default is not NO_DEFAULT}

    def setting(self, name: str) -> Setting:
        return next(s for s in self.settings if s.name == name)

    def schema(self) -> dict[str, Any]:
        """The JSON schema of an arm of this method: its declared settings, besides ``method`` and ``train``
        (whose schema is config/schema.yaml's); nothing else."""
        return {"type": "object", "required": ["method"], "additionalProperties": False,
                "properties": {"method": {"const": self.name}, "train": {},
                               **{s.name: dict(s.schema) for s in self.settings}}}
