"""Seeding and determinism (docs/method.md §10). Call ``seed_everything`` before any model is built."""

from __future__ import annotations

import os
import random


def prepare_determinism() -> None:
    """Must run before CUDA starts: cuBLAS reads this variable at initialisation."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    prepare_determinism()
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # warn_only: a few kernels have no deterministic version; they warn instead of crashing.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def random_state() -> dict:
    """Python's, numpy's and torch's global random states (and CUDA's, when there is one), for
    ``restore_random_state``: several pieces of work in one process each start where the first did."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (e.g. run seed and prompt id), independent of PYTHONHASHSEED."""
    import hashlib

    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
