"""Logging for rule scripts: everything (logging, warnings, tqdm progress on stderr) goes to the
rule's ``log:`` file, so `snakemake` output stays readable and every job leaves a full record."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup(log_path: str | None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (lives for the job)
        sys.stderr = stream
        handlers.append(logging.StreamHandler(stream))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    logging.captureWarnings(True)
