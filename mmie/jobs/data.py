"""Job functions of rules/data.smk: prepare_data, fit_lid, data_report (docs/method.md §2-4).
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
from pathlib import Path

from mmie import io, provenance
from mmie.config import eval_sets, raw_data_files
from mmie.data.corpus import warn_truncation
from mmie.jobs import EVAL_SETS, JobConfig, job, read_declared_split, splits_by_role

log = logging.getLogger(__name__)


@job("data", "languages", "eval", "lid.romanization", *EVAL_SETS)
def prepare_data(cfg: JobConfig, report_path: str, outputs=()) -> None:
    """Every split file, evaluation set and the LID check set, in the folder of ``report_path`` (the
    rule's outputs: ``mmie.data.corpus.split_path`` places the split files); ``outputs``, the rule's
    declared outputs, are checked to be what was written."""
    from mmie.data.prepare import prepare

    report = prepare(cfg, Path(report_path).parent, eval_sets(cfg))
    missing = [str(p) for p in outputs if str(p) != str(report_path) and not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"prepare_data did not write the declared outputs {missing} (rules/data.smk "
                                f"prepare_data's output and mmie.data.prepare disagree)")
    read = [p for role, p in raw_data_files(cfg).items() if role != "lid_audit"]  # fit_lid's input only
    report["provenance"] = provenance.build(cfg, inputs=read, rule="prepare_data")
    io.write_json(report_path, report)


@job("model", "data.max_length", "data.truncation_warn_share")
def data_report(cfg: JobConfig, prepare_report: str, data_files, model_dir: str | None, out: str) -> None:
    """The final data report: the prepare report plus token lengths and truncation rate under the
    model's tokenizer (which exists only once the model is known), for each of ``data_files`` (the
    rule's split files and evaluation sets, keyed by their path below the prepare report's folder)."""
    from mmie.data.corpus import histogram
    from mmie.model.loading import load_tokenizer, model_source

    report = io.read_json(prepare_report)
    tok = load_tokenizer(model_source(cfg["model"], model_dir))
    max_len = cfg["data"]["max_length"]
    tokens: dict[str, dict] = {}
    warn = cfg["data"]["truncation_warn_share"]
    data_dir = Path(prepare_report).parent
    for path in sorted(Path(p) for p in data_files):
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
    report["provenance_tokens"] = provenance.build(cfg, rule="data_report")
    io.write_json(out, report)


@job("lid", "languages", "data.lid_audit", "data.max_line_bytes")
def fit_lid(cfg: JobConfig, splits, lid_check: str, prepare_report: str, detector_out: str, report_out: str,
            lid_audit: str | None = None) -> None:
    """The romanized detector (romanized target vs retain vs synthetic noise) and the word lexicons of
    the noise rule, fitted on the train splits (forget, retain, each neighbour, natural romanized) and
    reported on the dev splits (never on test: the evaluation sets stay unseen), on the labelled LID
    check set and, when ``data.lid_audit`` is set, on hand-labelled generations (``lid_audit``).
    ``splits``: the rule's split files."""
    from mmie.data.prepare import read_lid_audit
    from mmie.lang.lid import LID, confusion, fit_detector
    from mmie.lang.translit import romanize

    files = splits_by_role(splits)

    def read(role: str, part: str) -> list[str]:
        return read_declared_split(files, role, part, "fit_lid")

    languages = cfg["languages"]
    target, retain = languages["target"]["code"], languages["retain"]["code"]
    neighbours = list(languages.get("neighbours", {}))
    scheme, script = cfg["lid"]["romanization"], languages["target"]["script"]
    derived = set_is_derived(prepare_report)
    train = {target: read("forget", "train"), retain: read("retain", "train"),
             **{code: read(f"neighbour_{code}", "train") for code in neighbours}}
    natural_train = [] if derived else read("forget_romanized", "train")
    detector = fit_detector(cfg["lid"], languages, train, natural_train)
    detector.save(detector_out)
    lid = LID(cfg["lid"], languages, detector)
    forget_dev, retain_dev = read("forget", "dev"), read("retain", "dev")
    natural_rom = [] if derived else read("forget_romanized", "dev")

    def acc(texts: list[str], want_target: bool) -> float:
        return sum((detector.prob_target(t) >= 0.5) == want_target for t in texts) / len(texts)

    target_rom = f"{target}_rom"
    check_items = io.read_jsonl(lid_check)
    # a shared check set (the demo's labels hi, en, ur, pa, bn, hi_rom) serves every study: items of a label
    # this study's LID cannot give (hi_rom when pa is the target) are left out, and counted
    foreign = sorted({it["label"] for it in check_items} - set(lid.labels))
    check_dropped = {lab: sum(it["label"] == lab for it in check_items) for lab in foreign}
    check_items = [it for it in check_items if it["label"] in lid.labels]
    if check_dropped:
        log.info("lid_check: left out %s (labels this study's LID does not have)", check_dropped)
    audit_path = cfg["data"]["lid_audit"]
    if bool(audit_path) != bool(lid_audit):
        raise ValueError(f"fit_lid: data.lid_audit is {audit_path!r} but the rule passed {lid_audit!r} "
                         f"(rules/data.smk fit_lid's lid_audit input)")
    audit_items = read_lid_audit(lid_audit, lid.labels, cfg["data"]["max_line_bytes"]) if lid_audit else None
    used = {f"{role}/train": texts for role, texts in
            (("forget", train[target]), ("retain", train[retain]), *((f"neighbours/{c}", train[c]) for c in neighbours))}
    used.update({"forget/dev": forget_dev, "retain/dev": retain_dev})
    if not derived:
        used.update({"romanized/train": natural_train, "romanized/dev": natural_rom})
    report = {
        "romanized_detector": {
            "train": {"romanized_target": len(train[target]) + len(natural_train), "retain": len(train[retain]),
                      "noise_synthetic": len(train[retain]), "scheme": scheme},
            "dev_accuracy": {
                "transliterated_forget_dev": acc([romanize(t, scheme, script) for t in forget_dev], True),
                "natural_romanized_dev": None if derived else acc(natural_rom, True),
                "retain_dev": acc(retain_dev, False)},
        },
        "lexicons": detector.lexicon_sources,
        "ensemble_on_dev": confusion(lid, [{"text": romanize(t, scheme, script), "label": target_rom} for t in forget_dev]
                                     + [{"text": t, "label": retain} for t in retain_dev]),
        "lid_check": ({**confusion(lid, check_items), "left_out_labels": check_dropped} if check_items else None),
        "lid_audit": ({"path": str(audit_path), **confusion(lid, audit_items)} if audit_items else None),
        "lid": lid.describe(),
        "provenance": provenance.build(cfg, rule="fit_lid", texts=used,
                                       inputs=[files[k] for k in sorted(files) if k[1] == "train"]
                                       + ([lid_audit] if lid_audit else [])),
    }
    io.write_json(report_out, report)


def set_is_derived(prepare_report: str | Path) -> bool:
    """Whether prepare_data derived the romanized split (no natural romanized data): its report says."""
    return bool(io.read_json(prepare_report).get("romanized_derived"))
