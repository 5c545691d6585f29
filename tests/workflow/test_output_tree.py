"""The output tree is part of the results contract (docs/outputs.md): the reduced workflow writes
exactly the files it wrote before the code was reorganised by stage (tests/expected/reduced_tree.txt,
recorded from the reduced run of commit c56b925, before the reorganisation, and extended since by the
robustness attacks' outputs, their jobs one per (arm, seed) since), plus those of arms added since (RMU)."""

import os
import re
from pathlib import Path

import pytest

from conftest import EXP, ROOT

EXPECTED = ROOT / "tests" / "expected" / "reduced_tree.txt"
# arms added after the recorded tree: their files are the only ones allowed beyond it
ADDED_ARMS = ("rmu",)


def tree(results: Path) -> list[str]:
    return sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())


def any_layer(paths: list[str]) -> list[str]:
    """The chosen layer's number out of the paths (``sae/layer3/`` → ``sae/layer<L>/``): which layer the
    selection picks depends on the CPU's float results (docs/demo.md), the set of files does not."""
    return sorted(re.sub(r"layer\d+", "layer<L>", p) for p in paths)


def without_added_arms(paths: list[str]) -> list[str]:
    pattern = re.compile(r"(^|/)(" + "|".join(map(re.escape, ADDED_ARMS)) + r")(/|\.|$)")
    return [p for p in paths if not pattern.search(p)]


@pytest.mark.slow
def test_output_tree_is_unchanged_except_added_arms(run_dir):
    got = tree(run_dir / "results" / EXP)
    if os.environ.get("MMIE_WRITE_TREE"):   # records the contract anew (only for a deliberate change of it)
        EXPECTED.write_text("\n".join(got) + "\n")
    expected = any_layer(EXPECTED.read_text().split())
    got = any_layer(got)
    kept = without_added_arms(got)
    assert sorted(set(expected) - set(kept)) == [], "files the contract promises are missing"
    assert sorted(set(kept) - set(expected)) == [], "files outside the contract appeared"
    added = sorted(set(got) - set(kept))
    for arm in ADDED_ARMS:
        assert any(f"{arm}/seed0/forget/metrics.json" == p for p in added), f"the added arm {arm} was not evaluated"
