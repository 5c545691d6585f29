"""The in-context attack (mmie/attacks/incontext.py): reproducible, nested example draws per item."""

import pytest

from mmie.attacks import ATTACKS
from mmie.attacks.incontext import ATTACK, with_examples

POOL = [f"वाक्य {i}" for i in range(10)]
ITEMS = [{"id": f"f{i}", "prompt": f"prompt {i}", "set": "forget", "n_tokens": i} for i in range(6)]


def shown(item: dict, n: int, sep: str = "\n") -> list[str]:
    parts = item["prompt"].split(sep)
    assert len(parts) == n + 1
    return parts[:n]


def test_declared():
    assert ATTACK.name == "incontext" and ATTACK.name in ATTACKS and ATTACK.strength == "shots"


def test_examples_precede_the_prompt_and_nothing_else_changes():
    out = with_examples(ITEMS, POOL, 3, seed=0)
    assert len(out) == len(ITEMS)
    for before, after in zip(ITEMS, out, strict=True):
        ex = shown(after, 3)
        assert len(set(ex)) == 3 and set(ex) <= set(POOL)              # distinct, from the pool
        assert after["prompt"] == "\n".join(ex) + "\n" + before["prompt"]
        assert {k: v for k, v in after.items() if k != "prompt"} == {k: v for k, v in before.items() if k != "prompt"}
    assert ITEMS[0]["prompt"] == "prompt 0"                             # the input is not modified
    assert len({tuple(shown(o, 3)) for o in out}) > 1                   # draws differ between items


def test_draws_are_reproducible_nested_and_per_item():
    a = with_examples(ITEMS, POOL, 8, seed=3)
    assert a == with_examples(ITEMS, POOL, 8, seed=3)
    assert a != with_examples(ITEMS, POOL, 8, seed=4)
    for n in (1, 2, 5):
        small = with_examples(ITEMS, POOL, n, seed=3)
        for s, big in zip(small, a, strict=True):
            assert shown(s, n) == shown(big, 8)[:n]                       # strengths are nested
    # an item's draw depends on its id and the seed only: not on the other items or their order
    reordered = with_examples(ITEMS[::-1], POOL, 8, seed=3)
    assert reordered == a[::-1]
    assert with_examples(ITEMS[2:3], POOL, 8, seed=3) == a[2:3]
    # the whole pool at n = len(pool): each item sees every example once
    full = with_examples(ITEMS, POOL, len(POOL), seed=3)
    assert all(sorted(shown(o, len(POOL))) == sorted(POOL) for o in full)


def test_a_custom_separator():
    out = with_examples(ITEMS[:1], POOL, 2, seed=0, separator=" || ")
    ex = out[0]["prompt"].split(" || ")
    assert len(ex) == 3 and ex[2] == "prompt 0" and set(ex[:2]) <= set(POOL)


def test_zero_examples_leave_the_items_as_they_are():
    out = with_examples(ITEMS, POOL, 0, seed=0)
    assert out == ITEMS and out[0] is not ITEMS[0]
    assert with_examples(ITEMS, [], 0, seed=0) == ITEMS


def test_too_few_examples_and_bad_input_are_refused():
    with pytest.raises(ValueError, match="11 examples per prompt need at least 11 example texts, the pool has 10"):
        with_examples(ITEMS, POOL, 11, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        with_examples(ITEMS, POOL, -1, seed=0)
    with pytest.raises(ValueError, match=r"example texts \[1\] are empty"):
        with_examples(ITEMS, ["a", " "], 1, seed=0)
    with pytest.raises(KeyError, match="without 'id' or 'prompt'"):
        with_examples([{"prompt": "x"}], POOL, 1, seed=0)
