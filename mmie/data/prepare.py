"""The prepare_data job (docs/method.md §1): raw role files → prepared splits, evaluation sets and a report.
Runs before any model is loaded, so an empty or mis-scripted role stops the run at once."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from mmie import io
from mmie.data.corpus import (
    FIT_SPLITS,
    MAX_LINE_BYTES,
    SPLITS,
    RoleReport,
    assign_parts,
    check_min_items,
    dedup,
    dedup_key,
    histogram,
    item_id,
    normalize,
    prompt_prefix,
    raw_lines,
    read_role_file,
    remove_cross_role,
    remove_overlap,
    script_filter,
    script_histogram,
    split_dir,
    split_path,
    stable_order,
)
from mmie.errors import DataError
from mmie.lang.translit import romanize

log = logging.getLogger(__name__)


def read_records(path: str | Path, fields: dict, what: str, max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """A small labelled JSONL file read as strictly as a role file (``mmie.data.corpus.raw_lines``: UTF-8 per
    line, BOM and CRLF accepted, a size cap per line): every line an object whose ``fields`` pass their
    checks ({name: (check, description)}); every error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: the {what} file does not exist")

    def bad(lineno: int, reason: str) -> None:
        raise DataError(f"{path}:{lineno}: {reason} (the {what})")

    items = []
    expected = ", ".join(f"{k}: {desc}" for k, (_, desc) in fields.items())
    for lineno, line in raw_lines(path, bad, max_line_bytes):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg}) (the {what})") from err
        if not (isinstance(obj, dict) and all(ok(obj.get(k)) for k, (ok, _) in fields.items())):
            raise DataError(f"{path}:{lineno}: expected an object with {expected} (the {what})")
        items.append({k: obj[k] for k in fields})
    if not items:
        raise DataError(f"{path}: the {what} is empty")
    return items


def read_gibberish(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> list[str]:
    """The optional target-script gibberish file (``data.gibberish``): ``{"text": str}`` per line."""
    return [r["text"] for r in read_records(path, {"text": (_is_str, "str")}, "gibberish set (data.gibberish)",
                                            max_line_bytes)]


def _is_str(x) -> bool:
    return isinstance(x, str)


def read_lid_check(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """The labelled LID check set: {text, label} per line."""
    return read_records(path, {"text": (_is_str, "str"), "label": (_is_str, "str")}, "LID check set (data.lid_check)",
                        max_line_bytes)


def read_lid_audit(path: str | Path, labels, max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """Hand-labelled generations (``data.lid_audit``): {"text", "label"} per line, extra fields ignored;
    every label one of ``labels`` (the LID's, ``noise`` and ``und`` included)."""
    allowed = sorted(labels)
    return read_records(path, {"text": (_is_str, "str"), "label": (lambda x: x in allowed, f"one of {allowed}")},
                        "LID audit set (data.lid_audit)", max_line_bytes)


def read_yes_no(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """Yes/no comprehension questions: {"question": str, "answer": "yes"|"no"} per line."""
    return read_records(path, {"question": (_is_str, "str"), "answer": (lambda a: a in ("yes", "no"), '"yes" or "no"')},
                        "yes/no set (data.yes_no)", max_line_bytes)


def read_translations(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """Target-language sentences with reference translations: {"source": str, "reference": str} per line."""
    ok = (lambda x: isinstance(x, str) and bool(x.strip()), "a non-empty string")
    return read_records(path, {"source": ok, "reference": ok}, "translations (data.translations)", max_line_bytes)


def _load_role(config: Mapping, role: str, path: str, script: str | None) -> tuple[list[str], RoleReport]:
    data = config["data"]
    texts, rep = read_role_file(path, role, on_bad_line=data["on_bad_line"], clean_debris=data["clean_debris"],
                                max_line_bytes=data["max_line_bytes"])
    texts = dedup(texts, rep)
    texts = script_filter(texts, script, data["script_min_share"], rep)
    check_min_items(texts, role, rep, data["min_items"], "reading, deduplication and script filtering")
    return texts, rep


def _derive_romanized(forget: dict[str, list[str]], retain: list[str], scheme: str,
                      cross_role: dict[str, int], script: str = "devanagari") -> tuple[dict[str, list[str]], RoleReport]:
    """Romanized parts transliterated from the forget parts (part for part, so romanized/test comes
    from forget/test); duplicates and texts equal to a retain text are removed and counted."""
    rep = RoleReport(role="forget_romanized", path=f"derived: forget/<split> transliterated ({script}, {scheme})")
    retain_keys = {dedup_key(t) for t in retain}
    seen: set[str] = set()
    parts: dict[str, list[str]] = {}
    for part in SPLITS:
        parts[part] = []
        for t in (romanize(x, scheme, script) for x in forget[part]):
            rep.records += 1
            key = dedup_key(t)
            if key in retain_keys:
                rep.cross_role_removed += 1
                cross_role["forget_romanized|retain"] = cross_role.get("forget_romanized|retain", 0) + 1
            elif key in seen:
                rep.normalized_duplicates += 1
            else:
                seen.add(key)
                parts[part].append(t)
    return parts, rep


def prepare(config: Mapping, out_dir: str | Path, sets) -> dict:
    """Write everything under ``out_dir`` (results/<experiment>/data) and return the report. ``sets``:
    the evaluation sets to build, in order (``mmie.config.eval_sets(config)``).

    Order: read and clean every role; remove texts shared by two split roles; split forget, retain
    (and a natural romanized file); drop neighbour texts that contain a forget/retain train or dev
    text, split the neighbours; derive the romanized parts (when no file is given) from the forget
    parts; drop prompts (mixed, adversarial) that contain any train or dev text; then build the
    evaluation sets from ``test`` parts only."""
    out = Path(out_dir)
    data, lang = config["data"], config["languages"]
    seed = data["seed"]
    reports: dict[str, RoleReport] = {}
    texts: dict[str, list[str]] = {}

    texts["forget"], reports["forget"] = _load_role(config, "forget", data["forget"], lang["target"]["script"])
    texts["retain"], reports["retain"] = _load_role(config, "retain", data["retain"], lang["retain"]["script"])
    neighbours = [f"neighbour_{code}" for code in lang.get("neighbours", {})]
    for role in neighbours:
        code = role[len("neighbour_"):]
        texts[role], reports[role] = _load_role(config, role, data["neighbours"][code],
                                                lang["neighbours"][code]["script"])
    romanized_derived = not data.get("forget_romanized")
    if not romanized_derived:
        texts["forget_romanized"], reports["forget_romanized"] = _load_role(
            config, "forget_romanized", data["forget_romanized"], "latin")
    for role in ("mixed", "adversarial"):
        if data.get(role):
            texts[role], reports[role] = _load_role(config, role, data[role], None)

    # one text, one role: a text in two roles (forget and retain, a neighbour and retain, ...) is removed from both
    split_now = ["forget", "retain", *neighbours] + ([] if romanized_derived else ["forget_romanized"])
    shared = {role: texts[role] for role in split_now}
    cross_role = remove_cross_role(shared, reports)
    texts.update(shared)
    for role in split_now:
        check_min_items(texts[role], role, reports[role], data["min_items"], "removing texts found in two roles")

    splits = {role: assign_parts(texts[role], data["split"], seed, role)
              for role in split_now if not role.startswith("neighbour_")}
    fit_norm = [normalize(t) for role in ("forget", "retain") for part in FIT_SPLITS for t in splits[role][part]]
    for role in neighbours:
        texts[role] = remove_overlap(texts[role], fit_norm, reports[role])
        check_min_items(texts[role], role, reports[role], data["min_items"], "removing overlap with train/dev texts")
        splits[role] = assign_parts(texts[role], data["split"], seed, role)
    if romanized_derived:
        splits["forget_romanized"], reports["forget_romanized"] = _derive_romanized(
            splits["forget"], texts["retain"], config["lid"]["romanization"], cross_role, lang["target"]["script"])
    for role, parts in splits.items():
        texts[role] = [t for part in SPLITS for t in parts[part]]

    fit_norm = [normalize(t) for parts in splits.values() for part in FIT_SPLITS for t in parts[part]]
    for role in [r for r in ("mixed", "adversarial") if r in texts]:
        texts[role] = remove_overlap(texts[role], fit_norm, reports[role])
        check_min_items(texts[role], role, reports[role], data["min_items"], "removing overlap with train/dev texts")

    for role, parts in splits.items():
        name = split_dir(role).replace("/", "-")
        for part, items in parts.items():
            io.write_jsonl(split_path(out, role, part), ({"id": item_id(f"{name}-{part}", t), "text": t} for t in items))

    ev = config["eval"]
    source = {"forget": splits["forget"]["test"], "retain": splits["retain"]["test"],
              "romanized": splits["forget_romanized"]["test"]}
    set_counts = {}
    for info in sets:
        if info.kind == "yes_no":
            qa = read_yes_no(data["yes_no"], data["max_line_bytes"])
            rows = [{"id": item_id("yes_no", q["question"]), "prompt": q["question"], "text": None, "lang": None,
                     "answer": q["answer"]} for q in qa][:ev["max_prompts"]]
            io.write_jsonl(out / "eval_sets" / "yes_no.jsonl", rows)
            set_counts[info.name] = {"available": len(qa), "used": len(rows)}
            continue
        if info.kind == "neighbour":
            pool = splits[f"neighbour_{info.name}"]["test"]
        elif info.kind == "prompts":
            pool = texts[info.name]
        elif info.kind == "comprehension":
            pairs = read_translations(data["translations"], data["max_line_bytes"])
            fit = set(fit_norm)
            kept = [p for p in pairs if normalize(p["source"]) not in fit]
            if len(kept) < data["min_items"]:
                raise DataError(f"{data['translations']}: {len(kept)} translation pairs left after removing "
                                f"{len(pairs) - len(kept)} whose source is a train/dev text; the comprehension set "
                                f"needs data.min_items = {data['min_items']}")
            chosen = stable_order([p["source"] for p in kept], seed, f"eval:{info.name}")[:ev["max_prompts"]]
            refs = {p["source"]: p["reference"] for p in kept}
            rows = [{"id": item_id(info.name, t), "prompt": ev["comprehension"]["template"].format(text=t),
                     "text": None, "lang": info.lang, "translation": refs[t]} for t in chosen]
            io.write_jsonl(out / "eval_sets" / f"{info.name}.jsonl", rows)
            set_counts[info.name] = {"available": len(pairs), "used": len(rows),
                                     "removed_as_train_or_dev": len(pairs) - len(kept)}
            continue
        else:
            pool = source[info.name]
        chosen = stable_order(pool, seed, f"eval:{info.name}")[:ev["max_prompts"]]
        rows = []
        for t in chosen:
            if info.kind == "prompts":
                rows.append({"id": item_id(info.name, t), "prompt": t, "text": None, "lang": info.lang})
            else:
                rows.append({"id": item_id(info.name, t), "prompt": prompt_prefix(t, ev["prompt_fraction"]),
                             "text": t, "lang": info.lang})
        io.write_jsonl(out / "eval_sets" / f"{info.name}.jsonl", rows)
        set_counts[info.name] = {"available": len(pool), "used": len(rows)}

    lid_items = read_lid_check(data["lid_check"], data["max_line_bytes"]) if data.get("lid_check") else []
    io.write_jsonl(out / "lid_check.jsonl", lid_items)

    for role, rep in reports.items():
        rep.kept = len(texts[role])
    report = {
        "roles": {role: rep.as_dict() for role, rep in reports.items()},
        "splits": {role: {p: len(v) for p, v in parts.items()} for role, parts in splits.items()},
        "split_fractions": dict(data["split"]),
        "cross_role_duplicates": cross_role,
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
