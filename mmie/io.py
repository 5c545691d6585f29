"""The one place that writes files. Every write is atomic: a temporary file in the same directory,
fsync, then ``os.replace`` — a reader (or a rerun after a kill) never sees a half-written output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sweep_stale(path: str | os.PathLike) -> list[Path]:
    """Remove what killed earlier writes of ``path`` left beside it (``.<name>.*`` temporaries);
    returns what was removed."""
    import glob
    import shutil

    path = Path(path)
    removed = []
    for stale in sorted(path.parent.glob(f".{glob.escape(path.name)}.*")):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
        removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A folder written in one piece: the block fills a temporary folder beside ``path`` (temporaries
    of killed earlier runs are swept first), which replaces ``path`` when the block succeeds and is
    removed when it fails. A reader never sees a half-written model or checkpoint folder."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _check_finite(obj: Any, where: str) -> None:
    """Refuse to write NaN/Inf: a metric that failed is an error, never a stand-in number."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"refusing to write non-finite value {obj!r} at {where}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, allow_nonfinite: bool = False) -> None:
    if not allow_nonfinite:
        _check_finite(obj, Path(path).name)
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False, allow_nan=allow_nonfinite) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            _check_finite(row, f"{Path(path).name}:{n + 1}")
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            n += 1
    return n


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file that mmie itself wrote (raw user data goes through ``mmie.data.corpus``)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def figure_pdf(path: str | os.PathLike) -> Path:
    """The vector (PDF) copy that ``save_figure`` writes beside a PNG figure."""
    return Path(path).with_suffix(".pdf")


def save_figure(path: str | os.PathLike, fig) -> None:
    """The figure as PNG at ``path`` (the report shows it) and as PDF beside it (for a paper)."""
    for out, fmt in ((Path(path), "png"), (figure_pdf(path), "pdf")):
        with atomic_path(out, suffix=out.suffix) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=fmt)
