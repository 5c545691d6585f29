"""Resumable training state (docs/method.md §6): with a :class:`ResumeStore`, every ``eval_every``
steps the whole training state (adapter tensors, optimizer, scheduler, RNG states, step, best-so-far
state, log rows) replaces one file atomically; a rerun with the same identity key continues from it
and ends with the same adapter, bit for bit, as an uninterrupted run (the loop: ``mmie.arms.unlearn``)."""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path

import torch

from mmie import io

log = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """A resume state exists but cannot be used."""


RESUME_FORMAT = 1
RESUME_FILE = "state.pt"


def rng_states() -> dict:
    """Python, NumPy and torch (CPU and CUDA) global RNG states, in types ``torch.load(weights_only=True)`` reads."""
    import numpy as np

    np_state = np.random.get_state(legacy=False)
    return {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": {"bit_generator": np_state["bit_generator"],
                      "key": torch.from_numpy(np_state["state"]["key"].astype("int64")),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    import numpy as np

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = states["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"],
                         "state": {"key": npst["key"].numpy().astype("uint32"), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        if not torch.cuda.is_available() or len(states["cuda"]) != torch.cuda.device_count():
            raise ResumeError("the resume state was written with a different set of CUDA devices; delete the "
                              "resume folder to start this run from scratch")
        torch.cuda.set_rng_state_all(states["cuda"])


def sweep_unfinished_writes(directory: str | Path) -> list[Path]:
    """Remove temporary resume-state files whose write a kill interrupted; returns what was removed."""
    directory = Path(directory)
    stale = sorted(directory.glob(f".{RESUME_FILE}.*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink()
        log.warning("removed %s, an unfinished resume-state write of a killed run", path)
    return stale


class ResumeStore:
    """The resumable state of one training run: ``<directory>/state.pt``, replaced atomically
    (temporary file + rename, mmie.io) every ``eval_every`` steps. ``key`` identifies the run (arm,
    seed, settings, model, data); a state with another key is never loaded."""

    def __init__(self, directory: str | Path, key: str) -> None:
        self.dir = Path(directory)
        self.key = key

    @property
    def path(self) -> Path:
        return self.dir / RESUME_FILE

    def load(self) -> dict | None:
        """The saved state when it belongs to this run, else None (a state of another run is logged and ignored)."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
            raise ResumeError(f"the resume state {self.path} cannot be read ({err}); delete {self.dir} to start "
                              f"this run from scratch") from err
        if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT or payload.get("key") != self.key:
            found = payload.get("key") if isinstance(payload, dict) else type(payload).__name__
            log.warning("ignoring the resume state %s: it belongs to another run (key %s, this run %s: the arm, "
                        "seed, settings, model or data changed); training starts from step 0 and overwrites it",
                        self.path, found, self.key)
            return None
        return payload

    def save(self, payload: dict) -> None:
        with io.atomic_path(self.path) as tmp:
            torch.save({**payload, "format": RESUME_FORMAT, "key": self.key}, tmp)
        log.debug("saved the resumable state after step %s to %s", payload.get("step"), self.path)

    def clear(self) -> None:
        """Remove the folder (after the checkpoint is written)."""
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                path.unlink()
            self.dir.rmdir()
