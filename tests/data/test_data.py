"""Data rules of docs/method.md §1 (and rows 3 and 12 of the reliability table)."""
import json

import pytest

from conftest import DEMO as DEMO_DIR
from conftest import write_lines
from mmie.data.corpus import (
    RoleReport,
    assign_parts,
    check_min_items,
    dedup,
    extract_text,
    prompt_prefix,
    read_role_file,
    remove_cross_role,
    remove_overlap,
    script_filter,
)
from mmie.errors import DataError
from mmie.lang.scripts import dominant_script, script_proportions


def test_extract_text_key_order_and_messages():
    assert extract_text({"text": "b", "prompt": "a"}) == "a"
    assert extract_text({"prompt": "  ", "answer": "x"}) == "x"
    assert extract_text({"messages": [{"content": "q"}, {"content": "last"}]}) == "last"
    assert extract_text("bare") == "bare"
    assert extract_text({"text": 5}) is None
    assert extract_text(7) is None


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = write_lines(tmp_path / "f.jsonl", [b'{"text": "ok"}\n', b'{"text": "bad \xff"}\n'], raw=True)
    with pytest.raises(DataError, match=r"f\.jsonl:2: invalid UTF-8"):
        read_role_file(p, "forget")
    texts, rep = read_role_file(p, "forget", on_bad_line="skip")
    assert texts == ["ok"] and rep.skipped[0]["line"] == 2


def test_invalid_json_names_file_and_line_and_skip_counts(tmp_path):
    p = write_lines(tmp_path / "f.jsonl", [b'{"text": "a"}\n', b'{"text": \n', b'{"text": "c"}\n'], raw=True)
    with pytest.raises(DataError, match=r"f\.jsonl:2: not valid JSON"):
        read_role_file(p, "retain")
    texts, rep = read_role_file(p, "retain", on_bad_line="skip")
    assert texts == ["a", "c"] and [s["line"] for s in rep.skipped] == [2]


def test_bom_crlf_and_blank_lines(tmp_path):
    p = write_lines(tmp_path / "f.jsonl", ['\ufeff{"text": "one"}\r\n'.encode(), b"\r\n", b'"two"\r\n'], raw=True)
    texts, rep = read_role_file(p, "forget")
    assert texts == ["one", "two"]
    assert rep.blank_lines == 1


def test_non_string_field_is_an_error_with_line(tmp_path):
    p = write_lines(tmp_path / "f.jsonl", [{"text": "fine"}, {"text": 12, "id": 3}])
    with pytest.raises(DataError, match=r"f\.jsonl:2: no text"):
        read_role_file(p, "forget")


def test_debris_detected_cleaned_and_counted(tmp_path):
    raw = ['{"items": [\n', '"नमस्ते दुनिया",\n', '{"text": "\\"quoted\\","}\n', '{"text": "say \\\\\\"hi\\\\\\""}\n', "]}\n"]
    p = tmp_path / "f.jsonl"
    p.write_text("".join(raw), encoding="utf-8")
    texts, rep = read_role_file(p, "forget")
    assert texts == ["नमस्ते दुनिया", "quoted", 'say "hi"']
    assert rep.debris["items_prefix"] == 1 and rep.debris["closing_brackets"] == 1
    assert rep.debris["trailing_comma"] == 1 and rep.debris["quoted_trailing_comma"] == 1
    assert rep.debris["escaped_quotes"] == 1
    assert rep.debris_cleaned == 5
    with pytest.raises(DataError, match="debris"):
        read_role_file(p, "forget", clean_debris=False)


def test_dedup_counts_exact_and_normalized():
    rep = RoleReport("r", "p")
    out = dedup(["a b", "a b", "a  b", "A B", "c"], rep)
    assert out == ["a b", "c"]
    assert rep.exact_duplicates == 1 and rep.normalized_duplicates == 2


def test_dandas_are_script_neutral():
    bengali = "আমি ভাত খাই।"
    assert script_proportions(bengali) == {"bengali": 1.0}
    assert dominant_script("ਮੈਂ ਘਰ ਜਾਂਦਾ ਹਾਂ।")[0] == "gurmukhi"
    assert script_proportions("१२३ । ॥ 42 !") == {}
    assert dominant_script("मेरा नाम राज है।") == ("devanagari", 1.0)


def test_script_filter_and_min_items_error_names_everything():
    rep = RoleReport("forget", "data/forget.jsonl")
    rep.records = 3
    kept = script_filter(["mera naam", "मेरा नाम", "tum kaun"], "devanagari", 0.5, rep)
    assert kept == ["मेरा नाम"] and rep.script_filtered == 2
    with pytest.raises(DataError) as err:
        check_min_items(kept, "forget", rep, 5, "script filtering")
    msg = str(err.value)
    for needle in ("forget", "data/forget.jsonl", "devanagari", "1 texts", "min_items=5", "2 removed"):
        assert needle in msg


def test_split_is_deterministic_disjoint_and_seeded():
    texts = [f"sentence number {i}" for i in range(100)]
    fr = {"train": 0.6, "dev": 0.1, "test": 0.2, "holdout": 0.1}
    a, b = assign_parts(texts, fr, 1, "forget"), assign_parts(list(reversed(texts)), fr, 1, "forget")
    assert a == b
    assert {p: len(v) for p, v in a.items()} == {"train": 60, "dev": 10, "test": 20, "holdout": 10}
    assert sorted(sum(a.values(), [])) == sorted(texts)
    assert sum(map(len, a.values())) == len(set(sum(a.values(), [])))   # no text in two parts
    assert assign_parts(texts, fr, 2, "forget")["train"] != a["train"]
    # adding a text moves at most the texts at the part boundaries, never reshuffles a part
    c = assign_parts(texts + ["one more sentence"], fr, 1, "forget")
    assert len(set(a["test"]) ^ set(c["test"])) <= 2


def test_split_too_small_names_role_and_fix():
    with pytest.raises(DataError, match=r"role 'neighbour_ur': 3 texts .*data.split"):
        assign_parts(["a", "b", "c"], {"train": 0.6, "dev": 0.1, "test": 0.2, "holdout": 0.1}, 1, "neighbour_ur")


def test_cross_role_duplicates_are_removed_from_both_roles_and_counted():
    texts = {"forget": ["नमस्ते दुनिया", "एक"], "retain": ["hello", "नमस्ते  दुनिया"], "neighbour_ur": ["HELLO", "سلام"]}
    reports = {r: RoleReport(r, r) for r in texts}
    pairs = remove_cross_role(texts, reports)
    assert texts == {"forget": ["एक"], "retain": [], "neighbour_ur": ["سلام"]}
    assert pairs == {"forget|retain": 1, "neighbour_ur|retain": 1}
    assert {r: rep.cross_role_removed for r, rep in reports.items()} == {"forget": 1, "retain": 2, "neighbour_ur": 1}


def test_overlap_with_training_texts_is_removed_and_counted():
    rep = RoleReport("mixed", "m")
    out = remove_overlap(["Translate: the cat sat.  Now!", "fresh prompt"], ["the cat sat."], rep)
    assert out == ["fresh prompt"] and rep.overlap_removed == 1


def test_prompt_prefix_leaves_something_to_continue():
    assert prompt_prefix("a b c d e", 0.4) == "a b"
    assert prompt_prefix("a b", 0.9) == "a"
    assert prompt_prefix("single", 0.5) == "single"


def test_prepare_stops_on_empty_role_before_any_model(tmp_path, demo_config):
    """Audit #3: a forget file in the wrong script stops prepare_data with role, file, filter and counts."""
    from mmie.config import deep_update, eval_sets
    from mmie.data.prepare import prepare

    bad = write_lines(tmp_path / "forget.jsonl", [{"text": f"mera naam raj hai {i}"} for i in range(40)])
    cfg = deep_update(demo_config, {"data": {"forget": str(bad)}})
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path / "out", eval_sets(cfg))
    msg = str(err.value)
    assert "'forget'" in msg and str(bad) in msg and "devanagari" in msg and "40 removed" in msg
    assert not (tmp_path / "out" / "eval_sets").exists()


def test_prepare_demo_writes_disjoint_splits_and_report(tmp_path, demo_config):
    from mmie.config import eval_sets
    from mmie.data.prepare import prepare

    report = prepare(demo_config, tmp_path, eval_sets(demo_config))
    rows = {p: [json.loads(x)["text"] for x in (tmp_path / "forget" / f"{p}.jsonl").read_text().splitlines()]
            for p in ("train", "dev", "test", "holdout")}
    assert not set(rows["train"]) & (set(rows["dev"]) | set(rows["test"]) | set(rows["holdout"]))
    assert report["splits"]["forget"]["train"] == len(rows["train"])
    assert report["roles"]["forget"]["kept"] >= 400
    sets = {p.stem for p in (tmp_path / "eval_sets").glob("*.jsonl")}
    assert sets == {"forget", "retain", "romanized", "mixed", "adversarial", "ur", "pa", "bn", "comprehension", "yes_no"}
    assert report["script_histogram"]["forget"]["devanagari"] > 0.99


def test_prepare_never_puts_one_text_in_two_splits_or_two_roles(tmp_path, demo_config):
    """Planted: a natural romanized line also in retain (both Latin script), a forget text also in a
    Devanagari neighbour file (spacing changed). prepare removes both copies of each, counts them
    per role and per pair, and no text ends in two split files; the evaluation sets come from test
    parts only."""
    from mmie.config import deep_update, eval_sets
    from mmie.data.corpus import SPLITS, dedup_key, split_path, split_roles
    from mmie.data.prepare import prepare

    def read(name):
        return [json.loads(x)["text"] for x in (DEMO_DIR / name).read_text().splitlines() if x]

    forget, retain, rom, gib = (read(n) for n in ("forget_hi.jsonl", "retain_en.jsonl", "forget_romanized.jsonl",
                                                  "gibberish_hi.jsonl"))
    retain_file = write_lines(tmp_path / "retain.jsonl", [{"text": t} for t in retain + [rom[3].upper()]])
    mr_file = write_lines(tmp_path / "mr.jsonl", [{"text": t} for t in gib[:40] + ["  " + forget[3].replace(" ", "  ")]])
    cfg = deep_update(demo_config, {"data": {"retain": str(retain_file), "neighbours": {"mr": str(mr_file)}},
                                    "languages": {"neighbours": {"mr": {"name": "Marathi", "script": "devanagari"}}}})
    out = tmp_path / "out"
    report = prepare(cfg, out, eval_sets(cfg))
    assert report["cross_role_duplicates"] == {"forget_romanized|retain": 1, "forget|neighbour_mr": 1}
    removed = {role: rep["cross_role_removed"] for role, rep in report["roles"].items() if rep["cross_role_removed"]}
    assert removed == {"forget": 1, "retain": 1, "forget_romanized": 1, "neighbour_mr": 1}
    owner: dict[str, str] = {}
    for role in split_roles(cfg["languages"]["neighbours"]):
        for part in SPLITS:
            for line in split_path(out, role, part).read_text().splitlines():
                key = dedup_key(json.loads(line)["text"])
                assert key not in owner, f"{role}/{part} repeats a text of {owner[key]}"
                owner[key] = f"{role}/{part}"
    assert dedup_key(forget[3]) not in owner and dedup_key(rom[3]) not in owner
    for name, role in (("forget", "forget"), ("retain", "retain"), ("romanized", "forget_romanized"),
                       ("mr", "neighbour_mr"), ("ur", "neighbour_ur")):
        for line in (out / "eval_sets" / f"{name}.jsonl").read_text().splitlines():
            assert owner[dedup_key(json.loads(line)["text"])] == f"{role}/test"


# ----------------------------------------------------------------------------- every input file is read strictly
SMALL_FILES = {
    "lid_check": (lambda p: __import__("mmie.data.prepare", fromlist=["x"]).read_lid_check(p, 2000),
                  '{"text": "नमस्ते दुनिया", "label": "hi"}'),
    "yes_no": (lambda p: __import__("mmie.data.prepare", fromlist=["x"]).read_yes_no(p, 2000),
               '{"question": "क्या यह सही है?", "answer": "yes"}'),
    "gibberish": (lambda p: __import__("mmie.data.prepare", fromlist=["x"]).read_gibberish(p, 2000),
                  '{"text": "मनस्ते यादुनि"}'),
}


@pytest.mark.parametrize("kind", sorted(SMALL_FILES))
def test_small_labelled_files_are_read_strictly_with_file_and_line(tmp_path, kind):
    from mmie.errors import DataError

    read, good = SMALL_FILES[kind]
    ok = tmp_path / "ok.jsonl"
    ok.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\r\n" + good.encode() + b"\r\n")   # BOM + CRLF accepted
    assert len(read(ok)) == 2
    bad_byte = tmp_path / "bad.jsonl"
    bad_byte.write_bytes(good.encode() + b"\n" + b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid UTF-8"):
        read(bad_byte)
    long = tmp_path / "long.jsonl"
    long.write_text(good + "\n" + good.replace("}", ', "pad": "' + "x" * 3000 + '"}') + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"long.jsonl:2: line of 3,0\d\d bytes is longer than data.max_line_bytes=2,000"):
        read(long)


def test_a_role_file_line_over_the_size_cap_is_a_bad_line(tmp_path):
    from mmie.data.corpus import read_role_file
    from mmie.errors import DataError

    path = tmp_path / "forget.jsonl"
    path.write_text('{"text": "नमस्ते"}\n{"text": "' + "क" * 2000 + '"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"forget.jsonl:2: line of .* bytes is longer than data.max_line_bytes=1,000"):
        read_role_file(path, "forget", max_line_bytes=1000)
    texts, rep = read_role_file(path, "forget", on_bad_line="skip", max_line_bytes=1000)
    assert texts == ["नमस्ते"] and rep.skipped[0]["line"] == 2 and rep.lines == 2
