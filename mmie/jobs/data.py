"""Job functions of rules/data.smk: prepare_data, fit_lid, data_report (docs/method.md §2-4).
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
from pathlib import Path

from mmie import io, provenance
from mmie.config import raw_data_files, section
from mmie.data.corpus import warn_truncation

log = logging.getLogger(__name__)


def prepare_data(config: dict, out_dir: str, report_path: str) -> None:
    from mmie.data.prepare import prepare

    report = prepare(config, out_dir)
    report["provenance"] = provenance.build(config, section(config, "data", "languages", "eval", "lid"),
                                            inputs=raw_data_files(config).values(), rule="prepare_data")
    io.write_json(report_path, report)


def data_report(config: dict, prepare_report: str, data_dir: str, model_dir: str | None, out: str) -> None:
    """The final data report: the prepare report plus token lengths and truncation rate under the
    model's tokenizer (which exists only once the model is known)."""
    from mmie.data.corpus import histogram
    from mmie.model.loading import load_tokenizer, model_source

    report = io.read_json(prepare_report)
    tok = load_tokenizer(model_source(config["model"], model_dir))
    max_len = config["data"]["max_length"]
    tokens: dict[str, dict] = {}
    warn = config["data"]["truncation_warn_share"]
    for path in sorted(Path(data_dir).rglob("*.jsonl")):
        if path.name == "lid_check.jsonl":
            continue
        rows = io.read_jsonl(path)
        texts = [r.get("text") or r.get("prompt") for r in rows]
        lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        key = str(path.relative_to(data_dir).with_suffix(""))
        share = sum(n > max_len for n in lengths) / len(lengths) if lengths else 0.0
        tokens[key] = {"histogram": histogram(lengths), "truncated_at_max_length": sum(n > max_len for n in lengths),
                       "truncation_rate": share}
        warn_truncation(key, sum(n > max_len for n in lengths), len(lengths), warn,
                        f"texts (longer than data.max_length={max_len} tokens)")
    report["tokens"] = {"max_length": max_len, "by_file": tokens}
    report["provenance_tokens"] = provenance.build(config, section(config, "data", "model"), rule="data_report")
    io.write_json(out, report)


def fit_lid(config: dict, data_dir: str, detector_out: str, report_out: str) -> None:
    """The romanized detector, fitted on transliterated forget/train vs retain/train and reported on
    the dev splits (never on test: the evaluation sets stay unseen)."""
    from mmie.data.corpus import read_split
    from mmie.lang.lid import LID, RomanizedDetector, confusion
    from mmie.lang.translit import romanize

    data = Path(data_dir)
    scheme = config["lid"]["romanization"]
    forget_train, retain_train = read_split(data, "forget", "train"), read_split(data, "retain", "train")
    detector = RomanizedDetector.train([romanize(t, scheme) for t in forget_train], retain_train)
    detector.save(detector_out)
    lid = LID(config["lid"], config["languages"], detector)
    forget_dev, retain_dev = read_split(data, "forget", "dev"), read_split(data, "retain", "dev")
    derived = set_is_derived(data)
    natural_rom = [] if derived else read_split(data, "forget_romanized", "dev")

    def acc(texts: list[str], want_target: bool) -> float:
        return sum((detector.prob_target(t) >= 0.5) == want_target for t in texts) / len(texts)

    target_rom = f"{config['languages']['target']['code']}_rom"
    retain = config["languages"]["retain"]["code"]
    check_items = io.read_jsonl(data / "lid_check.jsonl")
    used = {"forget/train": forget_train, "retain/train": retain_train, "forget/dev": forget_dev,
            "retain/dev": retain_dev, **({} if derived else {"romanized/dev": natural_rom})}
    report = {
        "romanized_detector": {
            "train": {"romanized_target": len(forget_train), "retain": len(retain_train), "scheme": scheme},
            "dev_accuracy": {
                "transliterated_forget_dev": acc([romanize(t, scheme) for t in forget_dev], True),
                "natural_romanized_dev": None if derived else acc(natural_rom, True),
                "retain_dev": acc(retain_dev, False)},
        },
        "ensemble_on_dev": confusion(lid, [{"text": romanize(t, scheme), "label": target_rom} for t in forget_dev]
                                     + [{"text": t, "label": retain} for t in retain_dev]),
        "lid_check": confusion(lid, check_items) if check_items else None,
        "lid": lid.describe(),
        "provenance": provenance.build(config, section(config, "lid", "languages"), rule="fit_lid",
                                       inputs=[data / "forget" / "train.jsonl", data / "retain" / "train.jsonl"],
                                       texts=used),
    }
    io.write_json(report_out, report)


def set_is_derived(data_dir: Path) -> bool:
    rep = Path(data_dir) / "prepare_report.json"
    return bool(rep.is_file() and io.read_json(rep).get("romanized_derived"))
