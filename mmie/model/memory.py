"""Memory back-off for every batched model pass (generation, likelihood scoring, token KL, MIA,
activation caching): on an out-of-memory error the batch size halves and the same items are tried
again, down to one item; each halving is recorded (the job's ``oom_retries`` in provenance) and
logged. A pass writes its results only after a batch succeeded, so a retried batch never counts
twice. At batch size 1 the error is raised with the item and what to lower."""

from __future__ import annotations

import logging
from typing import Callable

from tqdm import tqdm

log = logging.getLogger(__name__)


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def in_batches(n: int, batch_size: int, run: Callable[[int, int], None], *, desc: str,
               oom_log: list | None = None, hint: str = "lower the batch size or max_length in the config",
               progress: bool = True) -> None:
    """Call ``run(start, stop)`` over ``range(n)`` in consecutive batches, halving the batch size on
    an out-of-memory error (see the module doc); ``progress=False`` shows no progress bar."""
    import torch

    pos = 0
    with tqdm(total=n, desc=desc, unit="item", mininterval=2.0, disable=not progress) as bar:
        while pos < n:
            stop = min(n, pos + batch_size)
            try:
                run(pos, stop)
            except (RuntimeError, MemoryError) as err:
                if not is_oom(err):
                    raise
                if batch_size == 1:
                    raise RuntimeError(f"{desc}: out of memory at batch size 1 (item {pos}); {hint}") from err
                batch_size = max(1, batch_size // 2)
                if oom_log is not None:
                    oom_log.append({"where": desc, "new_batch_size": batch_size})
                log.warning("%s: out of memory, retrying with batch size %d", desc, batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            bar.update(stop - pos)
            pos = stop
