"""``incontext``: does the target language come back when the prompt shows some of it? Each forget
test prompt is preceded by ``n`` target-language sentences from forget/holdout (never a test text),
and the arm's outputs are measured again (docs/method.md "Removed or hidden?"). A model that lost the
language cannot continue in it from a few examples much better than the oracle; one whose output was
only pushed away from it (a prompt, a logit bias) is pulled back by the context.

The examples of an item are drawn from the item's own permutation of the pool (seeded by the seed and
the item's id), so the draw does not depend on the other items or their order, and the ``n`` examples
of a smaller strength are the first ``n`` of a larger one's: strengths are nested."""

from __future__ import annotations

from mmie.attacks import Attack

ATTACK = Attack(name="incontext", summary="target-language examples before each forget prompt bring the language back",
                strength="shots", reads="forget/holdout texts (the examples)")


def example_order(examples: list[str], item_id, seed: int) -> list[int]:
    """The item's permutation of the example pool (indices), from ``seed`` and its id."""
    import random

    from mmie.seeding import derived_seed

    order = list(range(len(examples)))
    random.Random(derived_seed("incontext", seed, item_id)).shuffle(order)
    return order


def with_examples(items: list[dict], examples: list[str], n: int, *, seed: int, separator: str = "\n") -> list[dict]:
    """``items`` with each ``prompt`` preceded by ``n`` examples (distinct within an item), each
    followed by ``separator``; every other key (``id`` included) unchanged. ``n=0``: the items as
    they are (copies). The draw per item: ``example_order``."""
    if n < 0:
        raise ValueError(f"incontext: the number of examples must be >= 0, got {n}")
    if n > len(examples):
        raise ValueError(f"incontext: {n} examples per prompt need at least {n} example texts, "
                         f"the pool has {len(examples)}")
    empty = [i for i, e in enumerate(examples) if not e.strip()]
    if empty:
        raise ValueError(f"incontext: example texts {empty[:5]} are empty")
    out = []
    for item in items:
        if "id" not in item or "prompt" not in item:
            raise KeyError(f"incontext: an item without 'id' or 'prompt' (keys: {sorted(item)})")
        if n == 0:
            out.append(dict(item))
            continue
        chosen = [examples[i] for i in example_order(examples, item["id"], seed)[:n]]
        out.append({**item, "prompt": "".join(e + separator for e in chosen) + item["prompt"]})
    return out
