"""The ``external`` arm: a model unlearned elsewhere, evaluated like every other arm (same sets,
metrics, gates, report). It is untrained here and seedless (evaluated once, at the config's first
seed). Two forms:

- ``adapter: <folder>`` — a peft adapter folder (``save_pretrained``) for the configured base model,
  or ``adapter: {source: hub, id, revision}`` — the same from the Hugging Face Hub, read from the local
  cache (``HF_HOME``; offline at run time like the base model, so fetched beforehand, and checked at
  ``snakemake -n``) at a required revision. It is loaded onto the job's model; ``reference()`` is peft's ``disable_adapter()``, so the base
  model's view uses the same weights (no second copy).
- ``model: {source: hub|local, id|path, revision}`` — a full model. It is loaded next to the base
  model (two copies in memory: the base model remains the reference of the base-relative metrics,
  e.g. token KL and fluency under the base model), and must share the base model's tokenizer, since
  both are fed the same token ids.

``check_spec`` runs at ``snakemake -n`` (through ``mmie.config.check``); ``build`` at load time is
strict: every tensor of the adapter file must land in the model."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from mmie.errors import ConfigError, ModelError

log = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_spec(name: str, spec: dict, workdir: str | Path = ".", method: str = "external") -> None:
    """Raise ConfigError naming ``arms.<name>`` when the spec cannot describe an external model."""
    key = f"arms.{name}"
    adapter, model = spec.get("adapter"), spec.get("model")
    if (adapter is None) == (model is None):
        raise ConfigError(f"{key}: method {method!r} needs exactly one of 'adapter' (a peft adapter folder) or "
                          f"'model' ({{source: hub|local, id|path, revision}}); got "
                          f"{'both' if adapter is not None else 'neither'}")
    if spec.get("on") is not None or spec.get("layers") is not None:
        raise ConfigError(f"{key}: 'on' and 'layers' do not apply to an {method} arm")
    if adapter is not None:
        adapter_files(name, adapter, workdir)
        return
    assert model is not None   # exactly one of the two is given
    source = model.get("source")
    if source == "hub":
        if not (model.get("id") and model.get("revision")):
            raise ConfigError(f"{key}.model: source 'hub' needs 'id' and a pinned 'revision' (a commit hash)")
    elif source == "local":
        path = model.get("path")
        if not path or not (Path(workdir) / path / "config.json").is_file():
            raise ConfigError(f"{key}.model.path: {path!r} is not a Hugging Face model folder (no config.json; "
                              f"relative paths are relative to the working directory, snakemake -d)")
    else:
        raise ConfigError(f"{key}.model.source must be 'hub' or 'local', got {source!r}")


def describe_adapter(adapter: str | dict) -> str:
    """How the config names the adapter: its folder, or ``hub:<id>@<revision>``."""
    return adapter if isinstance(adapter, str) else f"hub:{adapter['id']}@{adapter['revision']}"


def adapter_folder(name: str, adapter: str | dict, workdir: str | Path = ".") -> Path:
    """The adapter's folder: a local folder (relative to the working directory), or a hub adapter's
    snapshot in the local Hugging Face cache at its revision — never downloaded here (offline, like
    the base model): a missing snapshot is a ConfigError that says how to fetch it."""
    if isinstance(adapter, str):
        return Path(workdir) / adapter
    key = f"arms.{name}.adapter"
    repo, revision = adapter.get("id"), adapter.get("revision")
    if not (repo and revision):
        raise ConfigError(f"{key}: source 'hub' needs 'id' and a pinned 'revision' (a commit hash)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as err:
        raise ConfigError(
            f"{key}: {repo}@{revision} is not in the local Hugging Face cache (HF_HOME; runs are offline). Fetch it "
            f"once where the network is reachable, into the same HF_HOME: python -c \"from huggingface_hub import "
            f"snapshot_download as s; s('{repo}', revision='{revision}')\"") from err


def adapter_files(name: str, adapter: str | dict, workdir: str | Path = ".") -> dict:
    """The adapter folder's config (parsed) and weights file; ConfigError when either is missing."""
    folder = adapter_folder(name, adapter, workdir)
    adapter = describe_adapter(adapter)
    key = f"arms.{name}.adapter"
    if not folder.is_dir():
        raise ConfigError(f"{key}: adapter folder not found: {adapter} (a folder written by peft's save_pretrained; "
                          f"relative paths are relative to the working directory, snakemake -d)")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"{key}: {adapter} has no {ADAPTER_CONFIG}: not a peft adapter folder")
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ConfigError(f"{key}: {adapter}/{ADAPTER_CONFIG} cannot be read: {err}") from err
    if not isinstance(cfg, dict) or not cfg.get("peft_type"):
        raise ConfigError(f"{key}: {adapter}/{ADAPTER_CONFIG} names no peft_type: not a peft adapter config")
    weights = [f for f in ADAPTER_WEIGHTS if (folder / f).is_file()]
    if not weights:
        raise ConfigError(f"{key}: {adapter} has none of {list(ADAPTER_WEIGHTS)}: the adapter weights are missing")
    return {"config": cfg, "weights": folder / weights[0], "folder": folder}


def files(spec: dict) -> list[str]:
    """What an evaluation of the arm reads (Snakemake inputs: a change reruns it)."""
    if spec.get("adapter"):
        # a hub adapter is read from the cache at a pinned revision, like a hub model: no file input
        return [spec["adapter"]] if isinstance(spec["adapter"], str) else []
    model = spec.get("model") or {}
    return [model["path"]] if model.get("source") == "local" else []


class PeftExternal:
    """An adapter loaded onto the job's model: on in ``active()``, off in ``reference()``."""

    def __init__(self, peft_model) -> None:
        self.model = peft_model

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield

    def reference(self):
        return self.model.disable_adapter()


class ModelSwitch:
    """Two whole models behind one handle: ``model`` forwards to the external model, or to the base
    model inside ``reference()``."""

    def __init__(self, base, external) -> None:
        self.base, self.external = base, external
        self.current = external
        self.model = _Forward(self)

    @contextlib.contextmanager
    def _use(self, model) -> Iterator[None]:
        before, self.current = self.current, model
        try:
            yield
        finally:
            self.current = before

    def active(self):
        return self._use(self.external)

    def reference(self):
        return self._use(self.base)


class _Forward:
    """Calls and attributes go to the switch's current model."""

    def __init__(self, switch: ModelSwitch) -> None:
        object.__setattr__(self, "_switch", switch)

    def __call__(self, *args, **kwargs):
        return self._switch.current(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._switch.current, name)


def build(name: str, spec: dict, loaded, checkpoint=None, method: str = "external"):
    """The external arm on the job's loaded base model (an ``mmie.arms.Arm``); ``method``: the arm's
    method (the oracle arm loads its reference model the same way)."""
    from mmie.arms import Arm

    check_spec(name, spec, method=method)
    adapter: PeftExternal | ModelSwitch
    if spec.get("adapter"):
        adapter, details = load_adapter(name, spec["adapter"], loaded)
    else:
        adapter, details = load_full_model(name, spec["model"], loaded)
    return Arm(name=name, method=method, model=adapter.model, adapter=adapter, details=details)


def load_adapter(name: str, adapter: str | dict, loaded) -> tuple[PeftExternal, dict]:
    """Load strictly: every tensor of the adapter file must land in the model with its values."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict

    from mmie.provenance import file_sha256

    found = adapter_files(name, adapter)
    folder = found["folder"]
    key = f"arms.{name}.adapter"
    try:
        peft_model = PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, TypeError, OSError) as err:
        declared = found["config"].get("base_model_name_or_path")
        trained_for = f" (its adapter_config.json names {declared!r})" if declared else ""
        raise ModelError(f"{key}: the adapter in {folder} does not fit the base model {loaded.runtime.get('model')!r}"
                         f"{trained_for}; point it at an adapter trained for this model: "
                         f"{type(err).__name__}: {str(err)[:800]}") from err
    if found["weights"].suffix == ".safetensors":
        from safetensors.torch import load_file

        saved = load_file(str(found["weights"]))
        model_state = get_peft_model_state_dict(peft_model)
        missing = sorted(set(saved) - set(model_state))
        unused = sorted(set(model_state) - set(saved))
        if missing or unused:
            raise ModelError(f"{key}: the adapter in {folder} does not match the base model "
                             f"{loaded.runtime.get('model')!r}: tensors in the file the model has no place for "
                             f"{missing[:5]}, adapter tensors of the model not in the file {unused[:5]}")
        for k, v in saved.items():
            if not torch.equal(model_state[k].detach().cpu(), v.cpu()):
                raise ModelError(f"{key}: tensor {k} of {found['weights']} did not load (values differ)")
    peft_model.eval()
    declared = found["config"].get("base_model_name_or_path")
    if declared and declared != loaded.runtime.get("model"):
        log.warning("%s: the adapter was trained for %r, the base model here is %r (shapes and names fit)",
                    key, declared, loaded.runtime.get("model"))
    details = {"adapter": describe_adapter(adapter) if isinstance(adapter, dict) else str(folder),
               "adapter_sha256": file_sha256(found["weights"]),
               "peft_type": found["config"].get("peft_type"), "adapter_base_model": declared}
    return PeftExternal(peft_model), details


def load_full_model(name: str, model_spec: dict, loaded) -> tuple[ModelSwitch, dict]:
    """Load the external model like the base model (its dtype and device) and check its tokenizer."""
    from mmie.model.loading import load_model

    rt = loaded.runtime
    cfg = {"source": model_spec["source"], "id": model_spec.get("id"), "revision": model_spec.get("revision"),
           "path": model_spec.get("path"), "offline": True, "dtype": rt.get("dtype", "auto"),
           "attn_implementation": "auto", "quantization": rt.get("quantization", "none"),
           "device": rt.get("device", "auto"), "device_map": None}
    external = load_model(cfg)
    if external.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
        raise ModelError(f"arms.{name}.model: the tokenizer of {external.runtime['model']} differs from the base "
                         f"model's ({rt.get('model')}); both are fed the same token ids, so the external model must "
                         f"share the base model's tokenizer")
    details = {"model": {k: external.runtime[k] for k in ("model", "revision", "dtype", "device",
                                                          "attn_implementation", "n_parameters")}}
    return ModelSwitch(loaded.model, external.model), details
