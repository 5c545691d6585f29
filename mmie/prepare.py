"""The prepare_data job (METHOD §1): raw role files → prepared splits, evaluation sets and a report.
Runs before any model is loaded, so an empty or mis-scripted role stops the run at once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmie import io
from mmie.config import eval_sets
from mmie.data import (
    RoleReport,
    check_min_items,
    dedup,
    histogram,
    item_id,
    normalize,
    prompt_prefix,
    read_role_file,
    remove_overlap,
    script_filter,
    script_histogram,
    split_texts,
    stable_order,
)
from mmie.errors import DataError
from mmie.translit import romanize

log = logging.getLogger(__name__)


def read_records(path: str | Path, fields: dict, what: str) -> list[dict]:
    """A small labelled JSONL file read strictly: every line an object whose ``fields`` pass their
    checks ({name: (check, description)}); errors name file and line."""
    items = []
    expected = ", ".join(f"{k}: {desc}" for k, (_, desc) in fields.items())
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not (isinstance(obj, dict) and all(ok(obj.get(k)) for k, (ok, _) in fields.items())):
                raise DataError(f"{path}:{lineno}: expected an object with {expected}")
            items.append({k: obj[k] for k in fields})
    if not items:
        raise DataError(f"{path}: the {what} is empty")
    return items


def _is_str(x) -> bool:
    return isinstance(x, str)


def read_lid_check(path: str | Path) -> list[dict]:
    """The labelled LID check set: {text, label} per line."""
    return read_records(path, {"text": (_is_str, "str"), "label": (_is_str, "str")}, "LID check set")


def read_yes_no(path: str | Path) -> list[dict]:
    """Yes/no comprehension questions: {"question": str, "answer": "yes"|"no"} per line."""
    return read_records(path, {"question": (_is_str, "str"), "answer": (lambda a: a in ("yes", "no"), '"yes" or "no"')},
                        "yes/no set")


def _load_role(config: dict, role: str, path: str, script: str | None) -> tuple[list[str], RoleReport]:
    data = config["data"]
    texts, rep = read_role_file(path, role, on_bad_line=data["on_bad_line"], clean_debris=data["clean_debris"])
    texts = dedup(texts, rep)
    texts = script_filter(texts, script, data["script_min_share"], rep)
    check_min_items(texts, role, rep, data["min_items"], "reading, deduplication and script filtering")
    return texts, rep


def prepare(config: dict, out_dir: str | Path) -> dict:
    """Write everything under ``out_dir`` (results/<experiment>/data) and return the report."""
    out = Path(out_dir)
    data, lang = config["data"], config["languages"]
    seed = data["seed"]
    reports: dict[str, RoleReport] = {}
    texts: dict[str, list[str]] = {}

    texts["forget"], reports["forget"] = _load_role(config, "forget", data["forget"], lang["target"]["script"])
    texts["retain"], reports["retain"] = _load_role(config, "retain", data["retain"], lang["retain"]["script"])
    for code, spec in lang.get("neighbours", {}).items():
        role = f"neighbour_{code}"
        texts[role], reports[role] = _load_role(config, role, data["neighbours"][code], spec["script"])
    for role in ("mixed", "adversarial"):
        if data.get(role):
            texts[role], reports[role] = _load_role(config, role, data[role], None)

    splits = {role: split_texts(texts[role], data["split"], seed, role) for role in ("forget", "retain")}
    for role, parts in splits.items():
        for part, items in parts.items():
            io.write_jsonl(out / role / f"{part}.jsonl", ({"id": item_id(f"{role}-{part}", t), "text": t} for t in items))

    romanized_derived = not data.get("forget_romanized")
    if romanized_derived:
        scheme = config["lid"]["romanization"]
        rom = [romanize(t, scheme) for t in splits["forget"]["eval"]]
        rep = RoleReport(role="forget_romanized", path=f"derived: forget/eval transliterated ({scheme})")
        rep.records = len(rom)
        texts["forget_romanized"] = dedup(rom, rep)
        reports["forget_romanized"] = rep
    else:
        texts["forget_romanized"], reports["forget_romanized"] = _load_role(
            config, "forget_romanized", data["forget_romanized"], "latin")

    train_norm = [normalize(t) for role in ("forget", "retain") for t in splits[role]["train"]]
    for role in [r for r in texts if r.startswith("neighbour_") or r in ("mixed", "adversarial")]:
        texts[role] = remove_overlap(texts[role], train_norm, reports[role])
        check_min_items(texts[role], role, reports[role], data["min_items"], "removing overlap with training texts")
    for role, items in texts.items():
        if role.startswith("neighbour_"):
            code = role[len("neighbour_"):]
            io.write_jsonl(out / "neighbours" / f"{code}.jsonl", ({"id": item_id(code, t), "text": t} for t in items))

    ev = config["eval"]
    source = {"forget": splits["forget"]["eval"], "retain": splits["retain"]["eval"],
              "romanized": texts["forget_romanized"]}
    set_counts = {}
    for info in eval_sets(config):
        if info.kind == "yes_no":
            qa = read_yes_no(data["yes_no"])
            rows = [{"id": item_id("yes_no", q["question"]), "prompt": q["question"], "text": None, "lang": None,
                     "answer": q["answer"]} for q in qa][:ev["max_prompts"]]
            io.write_jsonl(out / "eval_sets" / "yes_no.jsonl", rows)
            set_counts[info.name] = {"available": len(qa), "used": len(rows)}
            continue
        if info.kind == "neighbour":
            pool = texts[f"neighbour_{info.name}"]
        elif info.kind == "prompts":
            pool = texts[info.name]
        elif info.kind == "comprehension":
            pool = splits["forget"]["eval"]
        else:
            pool = source[info.name]
        chosen = stable_order(pool, seed, f"eval:{info.name}")[:ev["max_prompts"]]
        rows = []
        for t in chosen:
            if info.kind == "comprehension":
                rows.append({"id": item_id(info.name, t), "prompt": ev["comprehension"]["template"].format(text=t),
                             "text": None, "lang": info.lang})
            elif info.kind == "prompts":
                rows.append({"id": item_id(info.name, t), "prompt": t, "text": None, "lang": info.lang})
            else:
                rows.append({"id": item_id(info.name, t), "prompt": prompt_prefix(t, ev["prompt_fraction"]),
                             "text": t, "lang": info.lang})
        io.write_jsonl(out / "eval_sets" / f"{info.name}.jsonl", rows)
        set_counts[info.name] = {"available": len(pool), "used": len(rows)}

    lid_items = read_lid_check(data["lid_check"]) if data.get("lid_check") else []
    io.write_jsonl(out / "lid_check.jsonl", lid_items)

    for role, rep in reports.items():
        rep.kept = len(texts[role])
    report = {
        "roles": {role: rep.as_dict() for role, rep in reports.items()},
        "splits": {role: {p: len(v) for p, v in parts.items()} for role, parts in splits.items()},
        "eval_sets": set_counts,
        "romanized_derived": romanized_derived,
        "lid_check_items": len(lid_items),
        "script_histogram": {role: script_histogram(t) for role, t in texts.items()},
        "length_words": {role: histogram([len(t.split()) for t in tx]) for role, tx in texts.items()},
        "length_chars": {role: histogram([len(t) for t in tx]) for role, tx in texts.items()},
    }
    for role, rep in reports.items():
        log.info("%s: %s", role, rep.as_dict())
    return report
