"""prepare_data and fit_lid with Punjabi as the target (config/studies/forget-pa.yaml): the derived
romanized set is Latin text, and the shared LID check set's items of a label this study cannot give
(hi_rom) are left out and counted, not scored as misses."""
import json
from pathlib import Path

from conftest import ROOT
from mmie import config as mcfg
from mmie.data.corpus import SPLITS, split_path, split_paths, split_roles


def test_punjabi_target_romanized_set_and_lid_check(tmp_path, monkeypatch):
    from mmie.jobs import data as data_job

    monkeypatch.chdir(ROOT)   # the study's data paths are relative to the repository root
    cfg = mcfg.load(ROOT / "config" / "studies" / "forget-pa.yaml")
    data = tmp_path / "data"
    data_job.prepare_data(cfg, str(data / "prepare_report.json"))
    rom = [json.loads(line)["text"] for line in split_path(data, "forget_romanized", "test").read_text().splitlines()]
    assert rom and all(not any("\u0a00" <= ch <= "\u0a7f" for ch in t) for t in rom)   # no Gurmukhi left
    assert sum(ch.isascii() and ch.isalpha() for t in rom for ch in t) > 0.9 * sum(ch.isalpha() for t in rom for ch in t)
    splits = split_paths(data, split_roles(cfg["languages"]["neighbours"]), SPLITS)
    report = tmp_path / "lid" / "report.json"
    data_job.fit_lid(cfg, splits, str(data / "lid_check.jsonl"), str(data / "prepare_report.json"),
                     str(tmp_path / "lid" / "detector.json"), str(report))
    check = json.loads(Path(report).read_text())["lid_check"]
    assert check["left_out_labels"] == {"hi_rom": 25}
    assert check["labels_true"] == ["bn", "en", "hi", "pa", "ur"] and check["n"] == 125
