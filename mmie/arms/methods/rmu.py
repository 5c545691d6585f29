"""``rmu``: Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark"; reference
code centerforaisafety/wmdp ``rmu/unlearn.py``).

At one layer ℓ (the arm's own ``layers: [ℓ]`` or the selected layer), the hidden state after decoder
layer ℓ (the place ``mmie.model.hooks.edit_layer_outputs`` acts on; ``hidden_states[ℓ+1]`` of
``output_hidden_states=True``) is trained so that

    loss = mean_tokens mean_hidden (h_θ(x_forget) − c·u)²  +  retain_weight · mean_tokens mean_hidden (h_θ(x_retain) − h_frozen(x_retain))²

token means over non-pad positions and not over the tokenizer's special prefix (BOS). ``u`` is a
fixed random unit vector drawn from the run's seed as in the reference code (uniform [0, 1) per
coordinate, then normalised); ``c = steering × N``, with N the mean per-token L2 norm of the frozen
model's forget activations at ℓ on the forget train texts (measured before training), so that one
``steering`` value means the same across models and layers (the paper's absolute c does not).

What is updated: a peft LoRA on the MLP modules (``targets``) of the ``update_layers`` layers up to ℓ
(ℓ−2..ℓ by default, clipped at layer 0), so the checkpoint is a standard peft adapter folder that
``mmie.arms.lora_adapter.LoraAdapter.load`` reads. The reference code trains the full ``down_proj`` weights of
ℓ−2..ℓ instead. Training, early stopping, resume, the NaN guard and the memory back-off are those of
every trained arm (``mmie.arms.unlearn.train``); only the objective is RMU's. The train settings
``objective``, ``beta``, ``bound``, ``retain_kl`` and ``retain_nll`` do not apply to it."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from mmie.arms.method import LAYERS, BuildContext, Method, Setting, unless_own_layers
from mmie.errors import ConfigError

NORM_TEXTS = 64      # forget train texts whose frozen activations at ℓ set N (c = steering × N)
NORM_BATCH = 16      # their batch size (halved on out-of-memory errors)


def build(ctx: BuildContext):
    from mmie.arms import Arm
    from mmie.arms.lora_adapter import LoraAdapter

    adapter = LoraAdapter.load(ctx.loaded.model, ctx.trained_checkpoint())
    return Arm(name=ctx.name, method="rmu", model=adapter.model, adapter=adapter,
               details={"checkpoint": str(ctx.checkpoint)})


def check(arm: str, spec: dict, config: Mapping, workdir) -> None:
    """RMU misdirects exactly one layer: the arm's own ``layers``, else the forced or selected ones."""
    own = spec.get("layers")
    forced = config["layers"]["force_layers"]
    n_selected = config["layers"]["selection"]["n_layers"]
    if own:
        if len(own) != 1:
            raise ConfigError(f"arms.{arm}.layers = {own}: an rmu arm misdirects exactly one layer; give one, "
                              f"e.g. layers: [{own[-1]}]")
    elif forced:
        if len(forced) != 1:
            raise ConfigError(f"arms.{arm} (rmu) reads layers.force_layers = {forced}, but RMU misdirects exactly "
                              f"one layer: set arms.{arm}.layers: [L]")
    elif n_selected != 1:
        raise ConfigError(f"arms.{arm} (rmu) reads the selected layers, but layers.selection.n_layers is "
                          f"{n_selected} and RMU misdirects exactly one layer: set arms.{arm}.layers: [L]")


def the_layer(layers) -> int:
    if not layers or len(layers) != 1:
        raise ConfigError(f"rmu needs exactly one layer, got {layers}: set the arm's layers: [L] "
                          f"(or layers.selection.n_layers: 1)")
    return int(layers[0])


def updated_layers(layer: int, update_layers: int) -> list[int]:
    """The layers whose MLPs get adapter weights: the ``update_layers`` layers up to ``layer``, clipped at 0."""
    return list(range(max(0, layer - update_layers + 1), layer + 1))


def create(spec: dict, model, layers):
    from peft import LoraConfig, get_peft_model

    from mmie.arms.lora_adapter import LoraAdapter
    from mmie.model.hooks import check_layers

    layer = the_layer(layers)
    check_layers(model, [layer])
    updated = updated_layers(layer, spec["update_layers"])
    cfg = LoraConfig(r=spec["rank"], lora_alpha=2 * spec["rank"], lora_dropout=0.0,
                     target_modules=list(spec["targets"]), layers_to_transform=updated, bias="none",
                     task_type="CAUSAL_LM")
    adapter = LoraAdapter(get_peft_model(model, cfg))
    adapter.layers = [layer]               # recorded in the manifest and the resume key (mmie.jobs.train)
    adapter.updated_layers = updated
    return adapter


def direction(hidden_size: int, seed: int):
    """u: uniform [0, 1) per coordinate from its own generator seeded with ``seed`` (the global RNG is
    untouched), normalised to unit length (the reference code's ``torch.rand`` then ``/ norm``)."""
    import torch

    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return u / u.norm()


def frozen_norm(model, adapter, layer: int, seqs: list[list[int]], pad_id: int, prefix: list[int]) -> float:
    """N: the mean per-token L2 norm of the frozen model's hidden state after ``layer`` over the
    valid (non-pad, non-prefix) positions of ``seqs``."""
    import torch

    from mmie.model.likelihood import right_pad
    from mmie.model.memory import in_batches

    if not seqs:
        raise ValueError("rmu: no forget train texts to measure the activation norm on")
    device = next(model.parameters()).device
    total, count = [0.0], [0]

    def run(start: int, stop: int) -> None:
        ids, mask = right_pad(seqs[start:stop], pad_id, device)
        h = hidden_after(model, layer, ids, mask)
        valid = text_positions(ids, mask, prefix)
        total[0] += float((h.float().norm(dim=-1) * valid).sum())
        count[0] += int(valid.sum())

    with torch.no_grad(), adapter.reference():
        in_batches(len(seqs), NORM_BATCH, run, desc="rmu activation norm", progress=False,
                   hint="lower train.max_length")
    if count[0] == 0:
        raise ValueError("rmu: the forget train texts have no token besides the special prefix")
    return total[0] / count[0]


def hidden_after(model, layer: int, ids, mask):
    """The hidden state after decoder layer ``layer`` (with its graph, for the gradient)."""
    from mmie.model.hooks import edit_layer_outputs

    seen = {}

    def keep(hidden):
        seen["h"] = hidden
        return hidden

    with edit_layer_outputs(model, {layer: keep}):
        model(input_ids=ids, attention_mask=mask)
    return seen["h"]


def text_positions(ids, mask, prefix: list[int]):
    """Positions that count: not padding and not the tokenizer's special prefix (BOS), whose hidden
    state carries no text and is left out like in the activation cache."""
    from mmie.model.hooks import fitted_positions

    return fitted_positions(ids, mask, prefix)


@functools.cache
def objective_type():
    """The objective class (defined on first use: this module stays light at import)."""
    import torch

    from mmie.arms.objectives import Objective, Term, count, masked_mean

    class RmuObjective(Objective):
        """forget_loss: masked token mean of mean_hidden (h_θ − c·u)² on forget rows; retain_loss:
        that of mean_hidden (h_θ − h_frozen)² on retain rows, weighted by ``retain_weight``. Each is a
        micro-batch's sum divided by the whole batch's count of positions (the memory back-off)."""

        def __init__(self, layer: int, control, retain_weight: float, prefix: list[int], record: dict) -> None:
            self.layer, self.control, self.prefix, self.record = layer, control, list(prefix), record
            self.spec = {"forget_loss": Term(1.0), "retain_loss": Term(retain_weight)}

        def _counted(self, mask):
            # every training sequence starts with the special prefix (mmie.jobs.train): its first
            # len(prefix) columns; terms() checks this against the ids
            valid = mask.bool().clone()
            valid[:, :len(self.prefix)] = False
            return valid

        def _valid(self, ids, mask, role: str):
            valid = text_positions(ids, mask, self.prefix)
            if not torch.equal(valid, self._counted(mask)):
                raise ValueError(f"rmu: a {role} training sequence does not start with the tokenizer's special "
                                 f"prefix {self.prefix}; sequences must be encoded as mmie.jobs.train does")
            return valid

        def totals(self, forget_mask, retain_mask):
            return {"forget_positions": count(self._counted(forget_mask)),
                    "retain_positions": count(self._counted(retain_mask))}

        def terms(self, model, adapter, forget_ids, forget_mask, retain_ids, retain_mask, totals):
            with torch.no_grad(), adapter.reference():
                ref_r = hidden_after(model, self.layer, retain_ids, retain_mask).float()
            with adapter.active():
                h_f = hidden_after(model, self.layer, forget_ids, forget_mask).float()
                h_r = hidden_after(model, self.layer, retain_ids, retain_mask).float()
            control = self.control.to(h_f.device)
            forget = masked_mean(((h_f - control) ** 2).mean(-1), self._valid(forget_ids, forget_mask, "forget"),
                                 totals["forget_positions"])
            retain = masked_mean(((h_r - ref_r) ** 2).mean(-1), self._valid(retain_ids, retain_mask, "retain"),
                                 totals["retain_positions"])
            return {"forget_loss": forget, "retain_loss": retain}

    return RmuObjective


def objective(spec: dict, adapter, forget: list[list[int]], pad_id: int, prefix: list[int], seed: int):
    """RMU's objective for ``adapter`` (made by :func:`create`, which fixed its layer) on the encoded
    forget train sequences: measures N on the first ``NORM_TEXTS`` of them, draws u from ``seed``;
    ``.record`` is what the manifest keeps."""
    layer = the_layer(getattr(adapter, "layers", None))
    model = adapter.model
    norm = frozen_norm(model, adapter, layer, forget[:NORM_TEXTS], pad_id, prefix)
    u = direction(model.config.hidden_size, seed)
    c = spec["steering"] * norm
    record = {"method": "rmu", "layer": layer, "updated_layers": adapter.updated_layers,
              "targets": list(spec["targets"]), "rank": spec["rank"], "lora_alpha": 2 * spec["rank"],
              "steering": spec["steering"], "activation_norm": norm,
              "norm_texts": min(len(forget), NORM_TEXTS), "c": c, "retain_weight": spec["retain_weight"],
              "special_prefix_masked": list(prefix),
              "direction": {"seed": seed, "draw": "torch.rand(hidden_size, generator=manual_seed(seed)) / norm",
                            "hidden_size": int(u.numel()), "norm": float(u.norm()),
                            "first": [round(float(x), 6) for x in u[:4]]}}
    return objective_type()(layer, c * u, spec["retain_weight"], prefix, record)


METHOD = Method(
    name="rmu", summary="RMU: forget activations at one layer pushed to a scaled random direction (LoRA on the MLPs "
                        "of the layers up to it)",
    build=build, create=create, objective=objective, check=check, trains=True, needs_selection=unless_own_layers,
    settings=(
        Setting("layers", LAYERS, "its one layer [ℓ]", default=None, default_doc="the selected layer"),
        Setting("update_layers", {"type": "integer", "minimum": 1},
                "how many layers up to ℓ get a LoRA on their MLPs (3: ℓ−2..ℓ as in the paper; clipped at layer 0)",
                default=3),
        Setting("targets", {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "the MLP modules adapted in the updated layers", default=["gate_proj", "up_proj", "down_proj"]),
        Setting("rank", {"type": "integer", "minimum": 1}, "LoRA rank (lora_alpha 2 × rank)", default=8),
        Setting("steering", {"type": "number", "exclusiveMinimum": 0},
                "forget activations at ℓ are pushed toward c·u, u a random unit vector from the seed and c = "
                "steering × the mean per-token norm of the frozen model's forget activations at ℓ", default=2.0),
        Setting("retain_weight", {"type": "number", "minimum": 0},
                "weight of the retain term, the mean squared distance of retain activations at ℓ to the frozen "
                "model's (the paper's α)", default=10.0)),
    description="RMU (Li et al. 2024): forget activations at ℓ pushed toward c·u, retain activations kept; one "
                "checkpoint (peft folder) per seed; `train` as for lora except `objective`, `beta`, `bound`, "
                "`retain_kl`, `retain_nll` (its own objective) ([docs/method.md §6](../docs/method.md#6-arms))",
    param_markers=("lora_",), imports=("peft",))
