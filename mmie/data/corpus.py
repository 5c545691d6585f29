"""Reading and preparing data (docs/method.md §1).

Raw JSONL is read strictly (UTF-8, a BOM accepted, file:line in every error), LLM-debris is detected
and (by default) cleaned with counts, duplicates are removed with counts, texts are filtered by
script, texts found in two roles are removed from both, every role is checked against ``min_items``,
forget/retain/romanized/each neighbour are split deterministically into train/dev/test/holdout and
evaluation prompts that contain train or dev texts are removed. Nothing is dropped silently: every
count lands in the prepare report.

Splits: ``train`` is fitted on, ``dev`` is for every choice and stopping rule (early stopping, layer
and feature selection, the dose-response sweep, the detector's report), ``test`` feeds the evaluation
sets only and ``holdout`` is never seen (MIA non-members)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmie.errors import DataError
from mmie.lang.scripts import dominant_script, script_proportions

log = logging.getLogger(__name__)
TEXT_KEYS = ("prompt", "text", "completion", "response", "output", "instruction", "input", "question", "answer")
SPLITS = ("train", "dev", "test", "holdout")
#: parts that fitting or choosing jobs may read
FIT_SPLITS = ("train", "dev")
BOM = "\ufeff"

# Debris of LLM-generated datasets (docs/method.md §1).
_ITEMS_PREFIX = re.compile(r'^\s*\{\s*"(items|data|sentences|examples)"\s*:\s*\[\s*')
_CLOSING = re.compile(r"^\s*[\]\}]+\s*,?\s*[\]\}]*\s*$")
_QUOTED_COMMA = re.compile(r'^\s*"(.*)"\s*,\s*$', re.S)


@dataclass
class RoleReport:
    """Everything that happened to one input file."""

    role: str
    path: str
    lines: int = 0
    blank_lines: int = 0
    records: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"line": n, "reason": ...}
    debris: Counter = field(default_factory=Counter)
    debris_cleaned: int = 0
    exact_duplicates: int = 0
    normalized_duplicates: int = 0
    script_filtered: int = 0
    script_filter: str | None = None
    overlap_removed: int = 0
    cross_role_removed: int = 0
    kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "path": self.path, "lines": self.lines, "blank_lines": self.blank_lines,
            "records": self.records, "skipped_count": len(self.skipped), "skipped": self.skipped,
            "debris": dict(self.debris), "debris_cleaned": self.debris_cleaned,
            "exact_duplicates": self.exact_duplicates, "normalized_duplicates": self.normalized_duplicates,
            "script_filter": self.script_filter, "script_filtered": self.script_filtered,
            "overlap_removed": self.overlap_removed, "cross_role_removed": self.cross_role_removed,
            "kept": self.kept,
        }


def extract_text(obj: Any) -> str | None:
    """The text of a record: first non-empty string among TEXT_KEYS, else the content of the last
    message; a bare JSON string is that string. None when the record has no text."""
    if isinstance(obj, str):
        return obj if obj.strip() else None
    if not isinstance(obj, dict):
        return None
    for key in TEXT_KEYS:
        val = obj.get(key)
        if isinstance(val, str) and val.strip():
            return val
    messages = obj.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if isinstance(last, dict) and isinstance(last.get("content"), str) and last["content"].strip():
            return last["content"]
    return None


def clean_text_debris(text: str) -> tuple[str, list[str]]:
    """Strip debris inside a text value; returns (cleaned, kinds found)."""
    kinds = []
    stripped = text.strip()
    m = _QUOTED_COMMA.match(stripped)
    if m:
        kinds.append("quoted_trailing_comma")
        stripped = m.group(1)
    elif len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        kinds.append("wrapped_in_quotes")
        stripped = stripped[1:-1]
    if '\\"' in stripped:
        kinds.append("escaped_quotes")
        stripped = stripped.replace('\\"', '"')
    return stripped.strip(), kinds


MAX_LINE_BYTES = 1_000_000   # data.max_line_bytes: one record longer than this is an error, not a silent load


def raw_lines(path: Path, bad, max_line_bytes: int = MAX_LINE_BYTES):
    """``(line number, text)`` of a JSONL file read as bytes: strict UTF-8 per line, a byte-order mark
    on the first line and CRLF endings accepted, a line over ``max_line_bytes`` refused. A bad line
    goes to ``bad(lineno, reason)`` (which raises or records) and is not yielded."""
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, bline in enumerate(lines, start=1):
        if bline.endswith(b"\r"):
            bline = bline[:-1]
        if len(bline) > max_line_bytes:
            bad(lineno, f"line of {len(bline):,} bytes is longer than data.max_line_bytes={max_line_bytes:,}")
            continue
        try:
            line = bline.decode("utf-8", errors="strict")
        except UnicodeDecodeError as err:
            bad(lineno, f"invalid UTF-8 at byte {err.start}: {bline[max(0, err.start - 8):err.start + 8]!r}")
            continue
        if lineno == 1 and line.startswith(BOM):
            line = line[len(BOM):]
        yield lineno, line


def read_role_file(path: str | Path, role: str, *, on_bad_line: str = "error",
                   clean_debris: bool = True, max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list[str], RoleReport]:
    """Read one raw JSONL file strictly. Returns its texts (cleaned, not yet deduplicated)."""
    path = Path(path)
    report = RoleReport(role=role, path=str(path))
    if not path.is_file():
        raise DataError(f"[{role}] data file not found: {path} (check data.{role} in the config)")
    texts: list[str] = []

    def bad(lineno: int, reason: str) -> None:
        if on_bad_line == "skip":
            report.skipped.append({"line": lineno, "reason": reason})
        else:
            raise DataError(f"{path}:{lineno}: {reason} (role {role}; fix the line, or set "
                            f"data.on_bad_line: skip to skip and count such lines)")

    raw = path.read_bytes()
    report.lines = raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n") else 0)
    for lineno, line in raw_lines(path, bad, max_line_bytes):
        if not line.strip():
            report.blank_lines += 1
            continue
        # Line-level debris: a stray {"items": [ prefix, closing brackets, "text", lines.
        m = _ITEMS_PREFIX.match(line)
        if m:
            report.debris["items_prefix"] += 1
            if not clean_debris:
                bad(lineno, "stray '{\"items\": [' prefix (debris; data.clean_debris is off)")
                continue
            report.debris_cleaned += 1
            line = line[m.end():]
            if not line.strip():
                continue
        if _CLOSING.match(line):
            report.debris["closing_brackets"] += 1
            if not clean_debris:
                bad(lineno, "stray closing brackets (debris; data.clean_debris is off)")
                continue
            report.debris_cleaned += 1
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            candidate = line.rstrip().rstrip(",")
            try:
                obj = json.loads(candidate)
            except json.JSONDecodeError:
                bad(lineno, f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            report.debris["trailing_comma"] += 1
            if not clean_debris:
                bad(lineno, "record followed by a trailing comma (debris; data.clean_debris is off)")
                continue
            report.debris_cleaned += 1
        text = extract_text(obj)
        if text is None:
            bad(lineno, f"no text: expected a non-empty string in one of {', '.join(TEXT_KEYS)} or "
                        f"messages[-1].content, got {type(obj).__name__}"
                        + (f" with keys {sorted(obj)}" if isinstance(obj, dict) else ""))
            continue
        cleaned, kinds = clean_text_debris(text)
        if kinds:
            report.debris.update(kinds)
            if clean_debris:
                report.debris_cleaned += 1
                text = cleaned
        if not text.strip():
            bad(lineno, "text is empty after removing debris")
            continue
        report.records += 1
        texts.append(text.strip())
    return texts, report


def normalize(text: str) -> str:
    """NFKC + whitespace folding: the key for normalized duplicates and overlap checks."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def split_dir(role: str) -> str:
    """The folder of a split role under results/<exp>/data: ``forget``, ``retain``, ``romanized``
    (role ``forget_romanized``) or ``neighbours/<code>`` (role ``neighbour_<code>``)."""
    if role == "forget_romanized":
        return "romanized"
    if role.startswith("neighbour_"):
        return f"neighbours/{role[len('neighbour_'):]}"
    return role


def split_roles(neighbours) -> list[str]:
    """Every split role of a config with these neighbour codes."""
    return ["forget", "retain", "forget_romanized", *(f"neighbour_{code}" for code in neighbours)]


def split_path(data_dir: str | Path, role: str, part: str) -> Path:
    if part not in SPLITS:
        raise ValueError(f"unknown split {part!r}; splits are {SPLITS}")
    return Path(data_dir) / split_dir(role) / f"{part}.jsonl"


def split_paths(data_dir: str | Path, roles, parts) -> list[str]:
    """The split files of ``roles`` x ``parts`` (rule inputs and outputs)."""
    return [str(split_path(data_dir, role, part)) for role in roles for part in parts]


def read_split(data_dir: str | Path, role: str, part: str) -> list[str]:
    """The texts of one split file, in file order."""
    from mmie import io

    path = split_path(data_dir, role, part)
    texts = [r["text"] for r in io.read_jsonl(path)]
    if not texts:
        raise DataError(f"{path} is empty; rerun prepare_data (role {role}, split {part})")
    return texts


def dedup_key(text: str) -> str:
    """The key under which two texts count as the same (normalized and casefolded)."""
    return normalize(text).casefold()


def dedup(texts: list[str], report: RoleReport) -> list[str]:
    seen_exact: set[str] = set()
    seen_norm: set[str] = set()
    out = []
    for t in texts:
        if t in seen_exact:
            report.exact_duplicates += 1
            continue
        seen_exact.add(t)
        n = dedup_key(t)
        if n in seen_norm:
            report.normalized_duplicates += 1
            continue
        seen_norm.add(n)
        out.append(t)
    return out


def script_filter(texts: list[str], script: str | None, min_share: float, report: RoleReport) -> list[str]:
    if not script:
        return texts
    report.script_filter = f"dominant script {script} (share >= {min_share})"
    out = [t for t in texts if dominant_script(t, min_share)[0] == script]
    report.script_filtered = len(texts) - len(out)
    return out


def check_min_items(texts: list[str], role: str, report: RoleReport, min_items: int, stage: str) -> None:
    if len(texts) < min_items:
        raise DataError(
            f"role '{role}' has {len(texts)} texts after {stage}, fewer than data.min_items={min_items} "
            f"(file {report.path}: {report.records} records read, {len(report.skipped)} bad lines skipped, "
            f"{report.exact_duplicates + report.normalized_duplicates} duplicates, "
            f"{report.script_filtered} removed by filter '{report.script_filter}', "
            f"{report.overlap_removed} removed as overlap with train/dev texts, "
            f"{report.cross_role_removed} removed as duplicates of another role's texts). "
            f"Check that the file holds {role} data in the expected script, or lower data.min_items.")


def stable_order(texts: list[str], seed: int, salt: str) -> list[str]:
    """A deterministic shuffle: sort by a hash of (seed, salt, text). Adding a text does not reshuffle others."""
    def key(t: str) -> str:
        return hashlib.sha256(f"{seed}\x1f{salt}\x1f{normalize(t)}".encode()).hexdigest()
    return sorted(texts, key=key)


def assign_parts(texts: list[str], fractions: dict[str, float], seed: int, role: str) -> dict[str, list[str]]:
    """train/dev/test/holdout parts of a role (``data.split``): the stable hash order cut by counts;
    dev, test and holdout get at least one text each and train the rest."""
    ordered = stable_order(texts, seed, role)
    n = len(ordered)
    sizes = {part: max(1, math.floor(n * fractions[part])) for part in SPLITS[1:]}
    sizes = {"train": n - sum(sizes.values()), **sizes}
    if sizes["train"] < 1:
        raise DataError(f"role '{role}': {n} texts cannot be split into {'/'.join(SPLITS)} with data.split={fractions} "
                        f"(add texts or lower the dev/test/holdout fractions)")
    out, start = {}, 0
    for part in SPLITS:
        out[part] = ordered[start:start + sizes[part]]
        start += sizes[part]
    return out


def remove_cross_role(texts: dict[str, list[str]], reports: dict[str, RoleReport]) -> dict[str, int]:
    """Texts found in two or more of ``texts``' roles are ambiguous (which language or role are they?):
    they are removed from every role that holds them, counted per role (``cross_role_removed``) and per
    pair of roles (the returned ``{"a|b": n}``)."""
    owners: dict[str, set[str]] = {}
    for role, items in texts.items():
        for t in items:
            owners.setdefault(dedup_key(t), set()).add(role)
    shared = {k: roles for k, roles in owners.items() if len(roles) > 1}
    pairs: Counter = Counter()
    for roles in shared.values():
        ordered = sorted(roles)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                pairs[f"{a}|{b}"] += 1
    for role in texts:
        kept = [t for t in texts[role] if dedup_key(t) not in shared]
        reports[role].cross_role_removed += len(texts[role]) - len(kept)
        texts[role] = kept
    return dict(sorted(pairs.items()))


def remove_overlap(texts: list[str], train_norm: list[str], report: RoleReport) -> list[str]:
    """Drop evaluation prompts that contain a train or dev text verbatim (after normalization)."""
    out = []
    for t in texts:
        nt = normalize(t)
        if any(tr and tr in nt for tr in train_norm):
            report.overlap_removed += 1
            continue
        out.append(t)
    return out


def prompt_prefix(text: str, fraction: float) -> str:
    """The first ``fraction`` of a sentence's words, used as a continuation prompt (at least one word,
    and at least one word left to continue when the text has two or more)."""
    words = text.split()
    if len(words) < 2:
        return text
    k = min(len(words) - 1, max(1, math.ceil(len(words) * fraction)))
    return " ".join(words[:k])


def item_id(set_name: str, text: str) -> str:
    return f"{set_name}-{hashlib.sha256(normalize(text).encode()).hexdigest()[:10]}"


def histogram(values: list[int], bins: int = 10) -> dict[str, Any]:
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    edges = [lo + i * width for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, (v - lo) // width)] += 1
    return {"edges": edges, "counts": counts, "min": lo, "max": hi, "mean": sum(values) / len(values)}


def script_histogram(texts: list[str]) -> dict[str, float]:
    """Mean letter share per script over texts."""
    totals: Counter = Counter()
    for t in texts:
        totals.update(script_proportions(t))
    return {k: round(v / len(texts), 4) for k, v in sorted(totals.items())} if texts else {}


def warn_truncation(name: str, truncated: int, total: int, limit: float, what: str) -> None:
    """Log a warning when more than ``limit`` of a set's prompts or texts were truncated."""
    if total and truncated / total > limit:
        log.warning("%s: %.1f%% of %s were truncated (%d of %d; warning threshold data.truncation_warn_share=%s)",
                    name, 100 * truncated / total, what, truncated, total, limit)
