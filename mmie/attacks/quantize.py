"""The quantization attack (Zhang et al. 2024, "Does your LLM truly unlearn? An embarrassingly simple
approach to recover unlearned knowledge", arXiv 2410.16454): unlearning by fine-tuning moves the
weights only a little, so rounding them to 8 or 4 bits can undo it. The arm is merged into its
model's weights where it can be, the merged model saved and reloaded with bitsandbytes (8 bit:
LLM.int8, ``Linear8bitLt``, outlier threshold 6.0; 4 bit: NF4, ``Linear4bit``, no double
quantization, compute in the model's dtype; ``mmie.model.loading.quantization_config``), and then
evaluated like any arm. Embeddings, norms and the output head stay in the model's dtype (transformers
leaves them unquantized), so the model's fingerprint (``mmie.arms.fingerprint.model_fingerprint``)
is unchanged and edit arms' layer assets still fit. bitsandbytes 0.50.2 also runs on the CPU; its
8-bit matmul casts float32 inputs to float16 there (it warns on every call).

What is merged, per method (``details["quantization"]``: ``merged``, ``how``, ``why_not``):

- lora, rmu, an external/oracle arm given as a peft ``adapter``: the adapter is merged
  (peft's ``merge_and_unload``) into a full-precision copy loaded for the purpose (the job's own
  model is never touched), saved, reloaded quantized; the merged folder is deleted after loading.
  The quantized arm has no base model: its ``reference()`` raises (the adapter is in the weights).
- an edit arm sitting ``on:`` a LoRA/RMU arm: that arm's adapter is merged as above, the edits
  (built once on the full-precision model, where the layer assets' fingerprint is checked) stay on,
  in full precision, on top of the quantized merged model;
- base; an external/oracle arm given as a whole model (loaded at the base model's quantization by
  ``mmie.arms.external_model``): nothing to merge, the model is loaded quantized;
- prompt (an instruction), reft (interventions on hidden states), edit arms (hooks on the
  residual stream), an edit arm on a ReFT arm: not a weight delta, so nothing can be merged; they
  stay on, in full precision, on top of the quantized base model (built by ``mmie.arms.build`` on it).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from mmie.arms.state import ArmStateError, Switch
from mmie.attacks import Attack
from mmie.errors import ConfigError, ModelError

ATTACK = Attack(name="quantize", summary="the arm merged into its weights where it can be, the model reloaded at 8 or "
                                         "4 bit (bitsandbytes LLM.int8 / NF4): does quantization undo the unlearning?",
                strength="bits", reads="none (the arm's weights)")

#: bits -> model.quantization value (mmie.model.loading.quantization_config) and what it is
BITS = {8: ("8bit", "LLM.int8 (bitsandbytes Linear8bitLt)"), 4: ("4bit", "NF4 (bitsandbytes Linear4bit)")}
PEFT_METHODS = ("lora", "rmu")          # trained arms whose checkpoint is a peft LoRA adapter (mergeable)

WHY_NOT = {
    "base": "nothing to merge: the model as loaded",
    "prompt": "an instruction, not weights: it stays in the prompt, on the quantized base model",
    "reft": "ReFT interventions edit hidden states (not a weight delta): they stay on, in full precision, on the "
            "quantized base model",
    "edit": "edits of the residual stream (hooks), not a weight delta: they stay on, in full precision, on the "
            "quantized base model",
    "whole": "nothing to merge: a whole model, loaded quantized like the base model (mmie.arms.external_model)",
}


def check_bits(bits) -> str:
    """The ``model.quantization`` value of ``bits`` (8 or 4); ConfigError otherwise."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ConfigError(f"robustness.quantize.bits: {bits!r} is not supported; use 8 (LLM.int8) or 4 (NF4)")
    return BITS[bits][0]


class Merged(Switch):
    """The switch of an arm merged into its weights: always on; there is no base model to go back to."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _as_base(self):
        raise ArmStateError(f"arm {self.name!r} is merged into the quantized weights: it has no base model; compute "
                            f"base quantities on the base model (the base arm's own quantized load)")


def plan(arm_name: str, spec: dict, config: Mapping | None) -> tuple[str | None, str | None]:
    """What can be merged: ``("peft", None)`` (the arm's adapter), ``("inner", None)`` (the LoRA/RMU arm
    an edit arm sits on), or ``(None, why_not)``."""
    from mmie.arms import base_arm
    from mmie.arms.methods import method

    name = spec["method"]
    declared = method(name, f"arms.{arm_name}.method")
    if name in PEFT_METHODS:
        return "peft", None
    if name in ("external", "oracle"):
        return ("peft", None) if spec.get("adapter") else (None, WHY_NOT["whole"])
    if declared.edit is not None:
        if config is None:
            raise ConfigError(f"arm {arm_name} ({name}) needs the config to be quantized (its edits and `on:`)")
        on = base_arm(config, arm_name)
        if on is not None and config["arms"][on]["method"] in PEFT_METHODS:
            return "inner", None
        return None, WHY_NOT["edit"] + (f" (and the {config['arms'][on]['method']} arm {on} it sits on: "
                                        f"{WHY_NOT['reft']})" if on is not None else "")
    if name in WHY_NOT:
        return None, WHY_NOT[name]
    raise ConfigError(f"arms.{arm_name}: the quantize attack does not know how to merge method {name!r}; add it to "
                      f"mmie.attacks.quantize.plan (mergeable peft adapter, or what stays on)")


def quantized_modules(model) -> int:
    """The number of bitsandbytes linear layers in ``model``."""
    import bitsandbytes as bnb

    return sum(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in model.modules())


def _merge_and_save(peft_model, tokenizer, folder: Path) -> None:
    """Merge the peft model's adapter into its base weights and save the plain model to ``folder``."""
    import torch

    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    if any("lora_" in n for n, _ in merged.named_parameters()):
        raise ModelError("merge_and_unload left LoRA parameters in the model; the adapter was not merged")
    merged.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quantized_arm(arm_name: str, spec: dict, model_cfg: dict, model_dir: str | None, checkpoint: str | None, *,
                  bits: int, config: Mapping | None = None, seed: int = 0, assets=None, files=(), workdir: str):
    """The arm ``arm_name`` on its model reloaded at ``bits`` (8 or 4). Returns ``(arm, loaded)``: an
    ``mmie.arms.Arm`` whose ``model`` is the quantized model, and the quantized ``LoadedModel``
    (its tokenizer and ``runtime``, for provenance). ``arm.details["quantization"]``: ``bits``,
    ``scheme``, ``merged`` (bool), ``how``, ``why_not`` (None when merged), ``quantized_modules``.

    ``model_cfg`` and ``model_dir``: as for ``mmie.model.loading.load_model`` (its ``quantization``
    is replaced); ``checkpoint``, ``config``, ``seed``, ``assets``, ``files``: as for
    ``mmie.arms.build``; ``workdir``: a scratch folder for the merged copy (deleted after loading).
    A merged arm's full-precision copy is loaded next to whatever the caller holds, then freed."""
    from mmie.arms import Arm, build, resolve_spec
    from mmie.arms.edit_arms import EditAdapter
    from mmie.model.loading import load_model

    kind = check_bits(bits)
    spec = resolve_spec(spec)
    what, why_not = plan(arm_name, spec, config)
    quant_cfg = {**model_cfg, "quantization": kind}
    if what is None:
        loaded = load_model(quant_cfg, model_dir)
        arm = build(arm_name, spec, loaded, checkpoint, config=config, seed=seed, assets=assets, files=files)
        how = "built by mmie.arms.build on the quantized base model"
    else:
        full = load_model({**model_cfg, "quantization": "none"}, model_dir)
        fp_arm = build(arm_name, spec, full, checkpoint, config=config, seed=seed, assets=assets, files=files)
        peft_model = fp_arm.adapter.model if what == "peft" else fp_arm.adapter.inner.model
        folder = Path(workdir) / f"{arm_name}.merged"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        try:
            _merge_and_save(peft_model, full.tokenizer, folder)
            tokenizer, source = full.tokenizer, {k: full.runtime[k] for k in ("model", "revision")}
            edits = (fp_arm.adapter.edits, fp_arm.adapter.skip_prefix) if what == "inner" else None
            details = dict(fp_arm.details)
            del full, fp_arm, peft_model
            _free_memory()                      # the full-precision copy, before the quantized load
            loaded = load_model({**quant_cfg, "source": "local", "path": str(folder)})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        loaded.tokenizer = tokenizer            # the base model's, not the saved copy's
        loaded.runtime = {**loaded.runtime, **source, "merged_arm": arm_name}
        if what == "peft":
            arm = Arm(name=arm_name, method=spec["method"], model=loaded.model, adapter=Merged(arm_name),
                      details=details)
            how = ("the adapter merged into a full-precision copy (peft merge_and_unload), saved, reloaded "
                   "quantized; no base model behind it (reference() raises)")
        else:
            assert edits is not None   # what == "inner"
            fns, prefix = edits
            arm = Arm(name=arm_name, method=spec["method"], model=loaded.model, details=details,
                      adapter=EditAdapter(loaded.model, fns, Merged(arm_name), skip_prefix=prefix))
            how = (f"the LoRA of the arm it sits on ({details.get('on')}) merged into a full-precision copy, saved, "
                   f"reloaded quantized; the edits (built on the full-precision model) stay on, in full precision")
    n = quantized_modules(loaded.model)
    if n == 0:
        raise ModelError(f"the {bits}-bit reload of {loaded.runtime.get('model')} has no bitsandbytes layer: nothing "
                         f"was quantized")
    arm.details["quantization"] = {"bits": bits, "scheme": BITS[bits][1], "merged": what is not None, "how": how,
                                   "why_not": why_not, "quantized_modules": n}
    return arm, loaded
