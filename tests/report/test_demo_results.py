"""The demo's results table is generated from a run, and a fresh run is compared with the expected one."""

import json

import pandas as pd
import pytest

from mmie.report import demo_results


def _run(tmp_path, estimate=0.2, decision="STOP", layers=(3,)):
    root = tmp_path / "results"
    (root / "summary").mkdir(parents=True)
    (root / "layers").mkdir()
    pd.DataFrame([
        {"arm": "base", "set": "forget", "metric": "target_rate", "estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n_seeds": 1},
        {"arm": "lora", "set": "forget", "metric": "target_rate", "estimate": estimate, "ci_low": 0.1, "ci_high": 0.3, "n_seeds": 3},
        {"arm": "lora", "set": "retain", "metric": "ppl", "estimate": 190.0, "ci_low": 170.0, "ci_high": 210.0, "n_seeds": 3},
    ]).to_csv(root / "summary" / "intervals.csv", index=False)
    (root / "summary" / "decisions.json").write_text(json.dumps({
        "lora": {"decision": decision, "failing": []}, "_provenance": {"git": {"commit": "abc123", "dirty": False}}}))
    (root / "layers" / "selection.json").write_text(json.dumps({"layers": list(layers)}))
    return root


def test_compare_accepts_identical_and_within_interval_runs(tmp_path):
    exp = tmp_path / "expected.json"
    demo_results.main(["expect", str(_run(tmp_path / "a")), str(exp)])
    ok, lines = demo_results.compare(_run(tmp_path / "b"), exp)
    assert ok and lines[0].startswith("3 of 3 headline estimates identical")
    ok, lines = demo_results.compare(_run(tmp_path / "c", estimate=0.25), exp)
    assert ok and "1 different but inside both intervals" in lines[0]


@pytest.mark.parametrize("change,needle", [({"estimate": 0.5}, "lora forget:target_rate"),
                                           ({"decision": "PROCEED"}, "lora: decision PROCEED"),
                                           ({"layers": (0,)}, "layer selection chose [0]")])
def test_compare_fails_when_a_conclusion_moves(tmp_path, change, needle):
    exp = tmp_path / "expected.json"
    demo_results.main(["expect", str(_run(tmp_path / "a")), str(exp)])
    ok, lines = demo_results.compare(_run(tmp_path / "b", **change), exp)
    assert not ok and any(needle in line for line in lines)
    assert demo_results.main(["compare", str(_run(tmp_path / "c", **change)), str(exp)]) == 1


def test_table_is_written_between_the_markers_and_names_the_commit(tmp_path):
    doc = tmp_path / "demo.md"
    doc.write_text(f"intro\n{demo_results.BEGIN}\nold table\n{demo_results.END}\noutro\n")
    demo_results.write_table(_run(tmp_path / "a"), doc)
    text = doc.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "commit `abc123`" in text and "| lora | 0.2 [0.1, 0.3] | 190 [170, 210] |" in text
