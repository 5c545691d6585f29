"""Which cached texts an SAE never trains on (docs/method.md §7): whole texts held out per role, drawn
once when the SAE is trained and recorded in its ``mmie.json`` (``data.holdout_texts``), then read
back and checked against the activation cache by whatever measures the SAE on them (loss recovered
in ``select_features``). Also the roles it never trains on and the seed every SAE job uses."""

from __future__ import annotations

from collections.abc import Mapping

from mmie.errors import DataError, SAEError

# Roles the SAE is not trained on: gibberish is a control for feature selection, and the romanized
# target must stay unseen so that `semantic` selection tests generalisation across scripts.
NOT_TRAINED_ON = ("gibberish", "forget_romanized")


def sae_seed(config: Mapping) -> int:
    """The SAE is shared by every run seed: it is trained (and its features chosen) with the first."""
    return int(config["seeds"][0])


def draw_holdout_texts(doc: dict, fraction: float, seed: int, *, source: str = "activation cache") -> dict[str, list[int]]:
    """Per role, the indices of the cached texts held out of SAE training: ``max(1,
    round(fraction × texts))`` whole texts (at most all but one), drawn by a generator seeded with
    ``seed`` (roles in sorted order). ``doc[role]`` is the text index of every cached token."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    held = {}
    for role in sorted(doc):
        texts = torch.unique(doc[role])
        if len(texts) < 2:
            raise DataError(f"{source}: role {role!r} has {len(texts)} text(s); holding out whole texts for the SAE's "
                            f"quality needs at least 2 per role (raise layers.activations.max_texts)")
        n_hold = min(len(texts) - 1, max(1, round(fraction * len(texts))))
        pick = torch.randperm(len(texts), generator=gen)[:n_hold]
        held[role] = sorted(int(t) for t in texts[pick])
    return held


def split_holdout_tokens(cache, roles: list[str], held: dict[str, list[int]]):
    """The cached tokens of ``roles`` split into (training rows, held-out rows): a token is held
    out exactly when its text is in ``held[role]``."""
    import torch

    train, test = [], []
    for role in roles:
        mask = torch.isin(cache.doc[role], torch.tensor(held[role], dtype=cache.doc[role].dtype))
        train.append(cache.acts[role][~mask])
        test.append(cache.acts[role][mask])
    return torch.cat(train), torch.cat(test)


def verified_holdout_texts(cache, meta: dict, role: str, rows: list[str], tok, max_length: int, limit: int,
                   where: str) -> list[int]:
    """The first ``limit`` of the SAE's held-out texts of ``role`` (indices into ``rows``, the
    role's train texts), each checked against the cache: text i must encode to as many tokens as
    the cache holds for text i (a cache built from other texts is an error, not a silent leak)."""
    from mmie.sae.activations import encode_texts

    held = meta.get("data", {}).get("holdout_texts")
    if held is None:
        raise SAEError(f"{where}/mmie.json has no data.holdout_texts: the SAE was trained by an older mmie that held "
                       f"out tokens, not texts; delete the folder and rerun train_sae")
    if not held.get(role):
        raise DataError(f"{where}/mmie.json: no held-out {role!r} texts (held out: {sorted(held)}); the SAE must be "
                        f"trained on the {role} role")
    idx = [int(i) for i in held[role][:limit]]
    if idx[-1] >= len(rows):
        raise DataError(f"{where}: held-out {role} text {idx[-1]} does not exist ({len(rows)} texts); the data changed "
                        f"after the activation cache was built: rerun cache_activations")
    seqs, skip = encode_texts(tok, [rows[i] for i in idx], max_length)
    for i, seq in zip(idx, seqs, strict=True):
        cached = int((cache.doc[role] == i).sum())
        if cached != len(seq) - skip:
            raise DataError(f"activation cache: {role} text {i} has {cached} cached tokens but the data's {role} "
                            f"text {i} encodes to {len(seq) - skip}: the cache was built from other texts; rerun "
                            f"cache_activations")
    return idx
