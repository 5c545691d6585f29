"""``logit_bias``: a planted suppression arm for known-answer checks, not an unlearning method. Inside
``active()`` a constant ``bias`` (negative) is added to the output logits of every vocabulary token
that writes the target script; the weights are untouched, so everything the model knows of the
target language is still there and only its output is pushed down. The robustness attacks (relearning,
in-context examples, the hidden-state probe) should see through it: it is what "hidden, not removed"
looks like (docs/method.md "Removed or hidden?").

Which tokens (``target_tokens``): a token whose text, decoded alone, holds a letter of the target
script (``languages.target.script``, letters as ``mmie.lang.scripts`` counts them); and, for
tokenizers that split characters into bytes (byte-level BPE, byte fallback), a piece of a
target-script character that decodes to no whole letter but that the tokenizer uses to write
target-script letters and no letter of another script (e.g. the lead bytes ``E0 A4`` of Devanagari).
Pieces shared with other scripts (a lone ``E0`` lead byte, a lone continuation byte) are not biased:
that would suppress the neighbour languages too. They are counted in the arm's details
(``shared_pieces``), unless ``bias_shared: true``. A model can still write target text through them,
byte by byte: the demo model does (a third of its forget answers are still Hindi at bias -8), so a
known-answer check that needs the target's output really pushed down sets ``bias_shared: true`` and
accepts that the neighbours sharing those pieces are pushed down too."""

from __future__ import annotations

import contextlib

from mmie.arms.method import BuildContext, Method, Setting
from mmie.arms.state import Switch
from mmie.errors import ConfigError


def _letters_by_script() -> dict[str, list[str]]:
    """Every letter and mark of the Basic Multilingual Plane, by script (``mmie.lang.scripts``)."""
    from mmie.lang.scripts import char_script

    out: dict[str, list[str]] = {}
    for cp in range(0x80, 0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        s = char_script(chr(cp))
        if s is not None:
            out.setdefault(s, []).append(chr(cp))
    return out


def target_tokens(tok, script: str) -> dict:
    """The token ids the arm biases for ``script`` (module doc): ``ids`` (sorted), ``letters`` (tokens
    whose text holds a letter of the script), ``pieces`` (target-only pieces of its characters) and
    ``shared_pieces`` (pieces its letters share with other scripts: not biased)."""
    from mmie.lang.scripts import SCRIPTS, char_script

    if script not in SCRIPTS:
        raise ConfigError(f"logit_bias: unknown script {script!r}; known: {', '.join(SCRIPTS)}")
    n = len(tok)
    texts = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    letters = {i for i, t in enumerate(texts) if any(char_script(ch) == script for ch in t)}
    lettered = {i for i, t in enumerate(texts) if any(char_script(ch) is not None for ch in t)}

    def used(chars: list[str]) -> set[int]:   # the tokens that write these characters (alone, and after a space)
        if not chars:
            return set()
        enc = tok([*chars, *(" " + c for c in chars)], add_special_tokens=False)["input_ids"]
        return {i for ids in enc for i in ids if i not in lettered and i < n}

    by_script = _letters_by_script()
    if not by_script.get(script):
        raise ConfigError(f"logit_bias: script {script!r} has no letters in the Basic Multilingual Plane")
    ours = used(by_script[script])
    theirs = set().union(*(used(chars) for s, chars in by_script.items() if s != script))
    pieces = {i for i in ours - theirs if "\ufffd" in texts[i]}
    shared = {i for i in ours & theirs if "\ufffd" in texts[i]}
    return {"ids": sorted(letters | pieces), "letters": len(letters), "pieces": len(pieces),
            "shared_pieces": len(ours & theirs), "shared_ids": sorted(shared - letters - pieces)}


class LogitBias(Switch):
    """A forward hook on the output embedding (``lm_head``) that adds ``vector`` to the logits, attached
    only inside ``active()``."""

    def __init__(self, model, vector) -> None:
        head = model.get_output_embeddings()
        if head is None:
            raise ConfigError(f"logit_bias: {type(model).__name__} has no output embedding (lm_head) to bias")
        if vector.shape != (head.weight.shape[0],):
            raise ConfigError(f"logit_bias: a bias of {tuple(vector.shape)} for an output embedding of "
                              f"{head.weight.shape[0]} tokens")
        self.head = head
        self.vector = vector

    @contextlib.contextmanager
    def _switched_on(self):
        def add(module, args, output):
            return output + self.vector.to(device=output.device, dtype=output.dtype)

        handle = self.head.register_forward_hook(add)
        try:
            yield
        finally:
            handle.remove()


def build(ctx: BuildContext):
    import torch

    from mmie.arms import Arm

    if ctx.config is None:
        raise ConfigError(f"arm {ctx.name} (logit_bias) needs the config (languages.target.script)")
    script = ctx.config["languages"]["target"]["script"]
    bias = float(ctx.spec["bias"])
    if not bias < 0:
        raise ConfigError(f"arms.{ctx.name}.bias must be negative (a suppression), got {bias}")
    model, tok = ctx.loaded.model, ctx.loaded.tokenizer
    chosen = target_tokens(tok, script)
    if not chosen["ids"]:
        raise ConfigError(f"arm {ctx.name} (logit_bias): no token of the tokenizer writes {script} letters")
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError(f"logit_bias: {type(model).__name__} has no output embedding (lm_head) to bias")
    ids = chosen["ids"] + (chosen["shared_ids"] if ctx.spec["bias_shared"] else [])
    vector = torch.zeros(head.weight.shape[0], dtype=torch.float32)
    vector[ids] = bias
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    details = {"bias": bias, "script": script, "biased_tokens": len(ids), "letter_tokens": chosen["letters"],
               "bias_shared": bool(ctx.spec["bias_shared"]),
               "target_pieces": chosen["pieces"], "shared_pieces": chosen["shared_pieces"], "vocabulary": len(tok),
               "where": "lm_head output" + (f" (before the final logit soft-capping at {softcap})" if softcap else "")}
    return Arm(name=ctx.name, method="logit_bias", model=model, adapter=LogitBias(model, vector), details=details)


METHOD = Method(
    name="logit_bias", build=build,
    settings=(Setting("bias", {"type": "number", "exclusiveMaximum": 0},
                      "the constant added to the logits of every token that writes the target script", default=-8.0),
              Setting("bias_shared", {"type": "boolean"},
                      "bias the byte pieces the target script shares with other scripts too (false: left alone, so a "
                      "byte-level model can still write the target through them; true pushes the neighbours sharing "
                      "them down too)", default=False)),
    description="a planted suppression for known-answer checks, not an unlearning method: `bias` added to the logits "
                "of every token that writes the target script (`languages.target.script`); weights untouched "
                "([docs/method.md §6](../docs/method.md#6-arms))",
    summary="planted suppression for known-answer checks: a negative bias on target-script tokens' logits "
            "(weights untouched; not an unlearning method)")
