"""Logging for rule scripts: everything (logging, warnings, tqdm progress on stderr) goes to the
rule's ``log:`` file, so `snakemake` output stays readable and every job leaves a full record."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

SECRET_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


def redact(text: str) -> str:
    """``text`` with the value of every secret variable of the environment replaced."""
    for var in SECRET_VARS:
        key = os.environ.get(var)
        if key:
            text = text.replace(key, "[redacted]")
    return text


class RedactingStream(io.TextIOBase):
    """A text stream that removes secrets from everything written to it: log records, warnings,
    progress bars and the traceback of an exception that ends the job all pass through here."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False


def setup(log_path: str | None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = RedactingStream(open(log_path, "a", encoding="utf-8", buffering=1))  # noqa: SIM115 (lives for the job)
        sys.stderr = stream
        handlers.append(logging.StreamHandler(stream))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    logging.captureWarnings(True)
