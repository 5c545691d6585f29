"""The relearning attack (Hu et al. 2024, "Jogging the memory of unlearned LLMs"; Deeb & Roger 2024,
"Do unlearning methods remove information from language model weights?"): a fresh LoRA, trained
for a few steps on forget/holdout texts with plain next-token NLL on top of the arm, the arm
switched on throughout. An arm that removed the target language needs as many steps as a model
that never learned it (the oracle); one that only hid it comes back after a few.

How the fresh LoRA is attached: as forward hooks on the target projections (the LoRA arm's default
``targets``), ``out += (alpha / rank) · B(A(x))`` with A Kaiming-uniform and B zero (peft's LoRA
initialisation), its weights in float32 outside the model. The same code then serves every arm
kind, and nothing in the model or the arm changes:

- base / oracle / external / prompt: the plain model (the external model inside ``active()``; the
  prompt arm's instruction is left to ``measure``: training texts carry none);
- lora / rmu / external adapters: the arm's peft adapter stays on and frozen, the fresh LoRA adds
  its term to the output of the peft-wrapped projection (no second peft adapter: peft would wrap
  projections the arm does not target, and deleting the adapter afterwards leaves those wrappers);
- reft and edit arms: their hooks on the decoder layers stay on (``arm.active()``).

Every parameter of the model and the arm is frozen during training (their ``requires_grad`` flags
are restored afterwards); the model stays in eval mode (no dropout). Afterwards the hooks are gone,
the arm is off and the model's weights are what they were (tests/attacks/test_relearn.py)."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Callable, Iterator

from mmie.attacks import Attack
from mmie.errors import ConfigError

ATTACK = Attack(name="relearn", summary="a fresh LoRA trained on top of the arm for k steps on forget/holdout texts "
                                        "(plain NLL): does the target language come back?",
                strength="steps", reads="forget/holdout texts")


def default_targets() -> list[str]:
    """The projections the project's LoRA arm adapts by default (``mmie.arms.methods.lora``)."""
    from mmie.arms.methods import method

    return list(method("lora").defaults["targets"])


class HookLora:
    """A LoRA (rank ``rank``, scale ``alpha / rank``) on every module of ``model`` whose last name
    component is in ``targets``, applied through forward hooks inside ``attached()``. Its
    parameters live here, not in the model (the model's ``state_dict`` never sees them)."""

    def __init__(self, model, targets: list[str], rank: int, alpha: float, seed: int) -> None:
        import torch

        if rank < 1:
            raise ConfigError(f"robustness.relearn.rank must be at least 1, got {rank}")
        found = {}
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in targets:
                width = _linear_sizes(module)
                if width is None:
                    raise ConfigError(f"relearn: module {name} ({type(module).__name__}) is not a linear layer; "
                                      f"the fresh LoRA adapts linear projections only ({targets})")
                found[name] = (module, width)
        if not found:
            raise ConfigError(f"relearn: {type(model).__name__} has no module named any of {targets} (the LoRA arm's "
                              f"default targets): the fresh LoRA has nothing to adapt in this architecture")
        self.targets, self.rank, self.scale = list(targets), int(rank), float(alpha) / rank
        self.modules = {name: module for name, (module, _) in found.items()}
        self.lora = torch.nn.ModuleDict()
        gen = torch.Generator().manual_seed(seed)           # drawn on the CPU: the same on every device
        for name, (module, (n_in, n_out)) in found.items():
            a = torch.nn.Linear(n_in, rank, bias=False, dtype=torch.float32)
            b = torch.nn.Linear(rank, n_out, bias=False, dtype=torch.float32)
            with torch.no_grad():
                torch.nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5), generator=gen)
                torch.nn.init.zeros_(b.weight)
            self.lora[name.replace(".", "__")] = torch.nn.Sequential(a, b).to(_device_of(module))

    def parameters(self) -> list:
        return list(self.lora.parameters())

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        try:
            for name, module in self.modules.items():
                pair = self.lora[name.replace(".", "__")]

                def hook(mod, args, output, pair=pair):
                    x = args[0]
                    return output + (self.scale * pair(x.float())).to(output.dtype)
                handles.append(module.register_forward_hook(hook))
            yield
        finally:
            for h in handles:
                h.remove()


def _linear_sizes(module) -> tuple[int, int] | None:
    """(in, out) features of a linear layer, plain, quantized or peft-wrapped (``base_layer``)."""
    inner = getattr(module, "base_layer", module)
    n_in, n_out = getattr(inner, "in_features", None), getattr(inner, "out_features", None)
    return (int(n_in), int(n_out)) if n_in and n_out else None


def _device_of(module):
    p = next(module.parameters(), None)
    if p is None:
        raise ConfigError(f"relearn: target module {type(module).__name__} has no parameters")
    return p.device


@contextlib.contextmanager
def _frozen(params: list) -> Iterator[None]:
    """``requires_grad`` off for the model's and the arm's parameters, restored afterwards."""
    flags = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _arm_parameters(arm, model) -> list:
    params = list(model.parameters())
    own = getattr(arm.adapter, "parameters", None)
    if callable(own):
        seen = {id(p) for p in params}
        params += [p for p in own() if id(p) not in seen]
    return params


def batches(seqs: list[list[int]], batch_size: int, n: int, seed: int) -> list[list[int]]:
    """``n`` batches of indices into ``seqs``: epochs of a permutation drawn from ``seed`` (each epoch
    its own), cycled as often as needed; a batch may straddle two epochs."""
    if not seqs:
        raise ValueError("relearn: no training texts")
    if batch_size < 1:
        raise ConfigError(f"robustness.relearn.batch_size must be at least 1, got {batch_size}")
    rng = random.Random(seed)
    stream: list[int] = []
    out = []
    for _ in range(n):
        while len(stream) < batch_size:
            order = list(range(len(seqs)))
            rng.shuffle(order)
            stream += order
        out.append(stream[:batch_size])
        stream = stream[batch_size:]
    return out


def relearn(arm, loaded, texts: list[str], steps: list[int], *, lr: float, rank: int, batch_size: int,
            max_length: int, seed: int, measure: Callable) -> tuple[list[tuple[int, dict]], dict]:
    """Train a fresh LoRA on top of ``arm`` (switched on throughout) with next-token NLL on ``texts``
    and call ``measure(model)`` after every k in ``sorted(steps)`` optimizer steps (k = 0: before
    any). ``model`` is ``arm.model`` with the arm and the fresh LoRA on; ``measure`` runs inside
    ``arm.active()``, so it must not switch the arm on again (a prompt arm's instruction,
    ``arm.system``, is for ``measure`` to put in front, as generation does).

    Texts are encoded as training does (``mmie.jobs.train``): the tokenizer's special prefix, then
    the text, cut at ``max_length`` tokens. Batches of ``batch_size`` in an order drawn from ``seed``
    (cycled); AdamW at ``lr`` (no weight decay, no schedule); the LoRA's initialisation is drawn from
    ``seed`` too. Returns ``([(k, measure(model)), ...], details)``; details: ``steps``, ``losses``
    (the batch NLL of each step, before its update), ``trainable_params``, ``rank``, ``alpha``,
    ``targets``, ``how``. Afterwards the fresh LoRA is gone and the arm is off."""
    import torch

    from mmie.arms.objectives import masked_mean, token_logprobs
    from mmie.model.generation import special_prefix
    from mmie.model.likelihood import right_pad

    ks = sorted({int(k) for k in steps})
    if not ks or ks[0] < 0:
        raise ConfigError(f"robustness.relearn.steps must be non-negative step counts, got {steps}")
    if not lr > 0:
        raise ConfigError(f"robustness.relearn.lr must be positive, got {lr}")
    if max_length < 2:
        raise ConfigError(f"robustness.relearn.max_length must be at least 2 tokens, got {max_length}")
    tok = loaded.tokenizer
    prefix = special_prefix(tok)
    seqs = [(prefix + tok(t, add_special_tokens=False)["input_ids"])[:max_length] for t in texts]
    seqs = [s for s in seqs if len(s) >= 2]
    if not seqs:
        raise ValueError(f"relearn: none of the {len(texts)} training texts has two tokens to train on")
    order = batches(seqs, batch_size, ks[-1], seed)
    targets, alpha = default_targets(), 2 * rank
    results: list[tuple[int, dict]] = []
    losses: list[float] = []
    with arm.active():
        model = arm.model                      # inside active(): the external arm's own model
        device = next(model.parameters()).device
        with _frozen(_arm_parameters(arm, model)):
            lora = HookLora(model, targets, rank, alpha, seed)
            params = lora.parameters()
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            with lora.attached():
                step = 0
                for k in ks:
                    while step < k:
                        ids, mask = right_pad([seqs[i] for i in order[step]], tok.pad_token_id, device)
                        with torch.enable_grad():
                            logits = model(input_ids=ids, attention_mask=mask).logits
                            lp, valid = token_logprobs(logits.float(), ids, mask)
                            loss = -masked_mean(lp, valid)
                            if not torch.isfinite(loss):
                                raise FloatingPointError(f"relearn: non-finite loss at step {step + 1} "
                                                         f"(lower robustness.relearn.lr)")
                            opt.zero_grad(set_to_none=True)
                            loss.backward(inputs=params)
                        opt.step()
                        losses.append(float(loss.detach()))
                        step += 1
                    with torch.no_grad():
                        results.append((k, measure(model)))
    details = {"steps": ks, "losses": losses, "trainable_params": sum(p.numel() for p in params),
               "rank": rank, "alpha": alpha, "targets": targets, "lr": lr, "batch_size": batch_size,
               "max_length": max_length, "seed": seed, "texts": len(seqs),
               "how": "a fresh LoRA as forward hooks on the target projections (weights outside the model, float32), "
                      "on top of the arm switched on (arm.active(): its adapter on and frozen, its hooks on); "
                      "AdamW on the LoRA only, the model in eval mode; removed afterwards"}
    return results, details
