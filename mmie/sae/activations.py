"""Residual-stream activations (docs/method.md §7): collected once per selected layer and shared by SAE
training, feature selection and the representation baselines, so the LLM is never re-run per SAE
step.

Cache file (``acts/layer<L>.safetensors``): for every role, ``acts.<role>`` — token-level
activations ``[tokens, d_in]`` after decoder layer L, padding and the tokenizer's special prefix
(BOS, whose activation is an outlier "attention sink") left out — and ``doc.<role>`` — the index of
the text each token came from. The header's metadata holds the layer, ``d_in``, the model
fingerprint and the roles; a reader checks them against what it expects.

Roles: ``forget`` (forget/train, target script), ``forget_romanized`` (the same texts
transliterated: the target in Latin script), ``gibberish`` (target-script letters that make no
words), ``retain`` (retain/train) and ``neighbour_<code>`` (neighbours/<code>/train). Only train
splits are cached: feature selection and the fitted directions never see dev, test or holdout."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from mmie.errors import ConfigError, DataError

CACHE_FORMAT = 1


def gibberish_from(texts: list[str], seed: int) -> list[str]:
    """Target-script gibberish: the letters inside each word shuffled (same characters and word
    lengths as real text, no words)."""
    rng = random.Random(seed)
    out = []
    for t in texts:
        words = []
        for w in t.split():
            chars = list(w)
            rng.shuffle(chars)
            words.append("".join(chars))
        out.append(" ".join(words))
    return out


def cache_roles(config, texts_of, max_texts: int) -> dict[str, list[str]]:
    """The texts of every cached role (see the module doc), at most ``max_texts`` each; ``texts_of``:
    role -> that role's train texts (the job reads them from the rule's declared split files)."""
    from mmie.lang.translit import romanize

    forget = texts_of("forget")[:max_texts]
    roles = {
        "forget": forget,
        "forget_romanized": [romanize(t, config["lid"]["romanization"], config["languages"]["target"]["script"])
                             for t in forget],
        "retain": texts_of("retain")[:max_texts],
    }
    gib = config["data"].get("gibberish")
    if gib:
        from mmie.data.prepare import read_gibberish

        roles["gibberish"] = read_gibberish(gib, config["data"]["max_line_bytes"])[:max_texts]
    else:
        roles["gibberish"] = gibberish_from(forget, config["data"]["seed"])
    for code in config["languages"].get("neighbours", {}):
        roles[f"neighbour_{code}"] = texts_of(f"neighbour_{code}")[:max_texts]
    for role, texts in roles.items():
        if not texts:
            raise DataError(f"no texts for activation role {role!r}")
    return roles


def encode_texts(tok, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of raw texts with the tokenizer's special prefix, cut at ``max_length``; also the
    prefix length (positions that are not cached)."""
    from mmie.model.generation import special_prefix

    prefix = special_prefix(tok)
    return [(prefix + tok(t, add_special_tokens=False)["input_ids"])[:max_length] for t in texts], len(prefix)


def collect(model, tok, texts: list[str], layers: list[int], *, max_length: int, batch_size: int,
            pooled: bool = False, desc: str = "activations",
            oom_log: list | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Activations after each of ``layers`` for ``texts``.

    ``pooled=False``: per layer ``(acts [tokens, d], doc [tokens])`` over real tokens only.
    ``pooled=True``: per layer ``(means [texts, d], counts [texts])`` — masked mean pooling."""
    from mmie.model.hooks import record_layer_outputs
    from mmie.model.likelihood import right_pad
    from mmie.model.memory import in_batches

    seqs, skip = encode_texts(tok, texts, max_length)
    if any(len(s) <= skip for s in seqs):
        empty = [i for i, s in enumerate(seqs) if len(s) <= skip]
        raise DataError(f"{desc}: {len(empty)} texts have no tokens (first: {texts[empty[0]]!r})")
    device = next(model.parameters()).device
    parts: dict[int, list] = {layer: [] for layer in layers}
    docs: list[torch.Tensor] = []

    def run(start: int, stop: int) -> None:   # appends only once the whole batch is through
        batch = seqs[start:stop]
        ids, mask = right_pad(batch, tok.pad_token_id, device)
        model(input_ids=ids, attention_mask=mask)
        keep = mask.bool().clone()
        keep[:, :skip] = False
        got = {}
        for layer in layers:
            h = store[layer].float()
            if pooled:
                w = keep.unsqueeze(-1).to(h.dtype)
                got[layer] = ((h * w).sum(1) / w.sum(1)).cpu()
            else:
                got[layer] = h[keep].cpu()
        doc = keep.sum(1).cpu() if pooled else torch.arange(len(batch)).unsqueeze(1).expand_as(keep)[keep.cpu()] + start
        for layer in layers:
            parts[layer].append(got[layer])
        docs.append(doc)

    with torch.inference_mode(), record_layer_outputs(model, layers) as store:
        in_batches(len(seqs), batch_size, run, desc=desc, oom_log=oom_log,
                   hint="lower layers.activations.batch_size or max_length")
    out = {}
    for layer in layers:
        acts = torch.cat(parts[layer])
        if not torch.isfinite(acts).all():
            raise FloatingPointError(f"{desc}: non-finite activations at layer {layer}")
        out[layer] = (acts, torch.cat(docs))
    return out


@dataclass
class Cache:
    acts: dict[str, torch.Tensor]
    doc: dict[str, torch.Tensor]
    meta: dict

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def d_in(self) -> int:
        return int(self.meta["d_in"])

    def tokens(self) -> int:
        return sum(int(a.shape[0]) for a in self.acts.values())


def write_cache(path: str | Path, layer: int, acts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                fingerprint: str, dtype: str = "float32", extra: dict | None = None) -> None:
    """One layer's cache (safetensors, written atomically)."""
    from safetensors.torch import save_file

    from mmie.io import atomic_path

    tensors, d_in = {}, None
    for role, (a, d) in acts.items():
        d_in = int(a.shape[1]) if d_in is None else d_in
        if a.ndim != 2 or a.shape[1] != d_in:
            raise ValueError(f"role {role}: activations of shape {tuple(a.shape)}, expected [tokens, {d_in}]")
        tensors[f"acts.{role}"] = a.to(getattr(torch, dtype)).contiguous()
        tensors[f"doc.{role}"] = d.to(torch.int64).contiguous()
    meta = {"format": str(CACHE_FORMAT), "layer": str(layer), "d_in": str(d_in), "model_fingerprint": fingerprint,
            "roles": json.dumps(sorted(acts)), "dtype": dtype, "extra": json.dumps(extra or {})}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_cache(path: str | Path, *, layer: int | None = None, fingerprint: str | None = None,
               d_in: int | None = None) -> Cache:
    """Read a cache and check it is the one expected (layer, model fingerprint, width); any
    mismatch or a damaged file is an error naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"activation cache {path} does not exist; run the cache_activations rule")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise DataError(f"activation cache {path} cannot be read ({err}); delete it and rerun cache_activations") from err
    if meta.get("format") != str(CACHE_FORMAT):
        raise DataError(f"activation cache {path} has format {meta.get('format')!r}, expected {CACHE_FORMAT}")
    problems = []
    if layer is not None and int(meta["layer"]) != layer:
        problems.append(f"layer {meta['layer']} != {layer}")
    if fingerprint is not None and meta["model_fingerprint"] != fingerprint:
        problems.append(f"model fingerprint {meta['model_fingerprint']} != {fingerprint}")
    if d_in is not None and int(meta["d_in"]) != d_in:
        problems.append(f"d_in {meta['d_in']} != {d_in}")
    if problems:
        raise ConfigError(f"activation cache {path} does not match: {'; '.join(problems)}")
    roles = json.loads(meta["roles"])
    acts = {r: tensors[f"acts.{r}"].float() for r in roles}
    doc = {r: tensors[f"doc.{r}"] for r in roles}
    meta["extra"] = json.loads(meta.get("extra", "{}"))
    return Cache(acts=acts, doc=doc, meta=meta)
