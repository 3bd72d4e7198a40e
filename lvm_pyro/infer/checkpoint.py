"""Checkpoints: atomic writes, weights-only reads.

A checkpoint holds only tensors and plain Python values (no pickled objects): model
state, trained parameters, optimizer state, RNG states, counters, history and the
configuration. It is written to a temporary file in the same folder, flushed to disk and
renamed over the old one, so a crash mid-write leaves the previous checkpoint intact. It is
read with ``torch.load(weights_only=True)``; a file holding pickled objects is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from lvm_pyro.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "lvm_pyro.checkpoint/1"


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """The checkpoint file inside a run directory."""
    return Path(directory) / CHECKPOINT_NAME


def prepare_directory(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and make sure it can be written, before training starts.

    Example:
        >>> import tempfile; prepare_directory(tempfile.mkdtemp()).is_dir()
        True
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint directory {str(path)!r} cannot be written ({exc.strerror or exc}): "
            "pass a writable checkpoint_dir"
        ) from exc
    return path


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically: temporary file, fsync, rename.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.pt")
        >>> save_checkpoint(p, {"step": 1}); load_checkpoint(p)["step"]
        1
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors map to the CPU).

    Refuses, with :class:`CheckpointError`, a missing file, a truncated or foreign file, and
    any file that needs unpickling Python objects (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}: train with checkpoint_dir=... first, or drop resume=True"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({exc})") from exc
        raise CheckpointError(
            f"{str(path)!r} holds pickled Python objects, which are not loaded for safety "
            "(weights_only=True): only checkpoints written by lvm_pyro can be resumed"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an lvm_pyro checkpoint ({FORMAT})")
    return state


def get_rng_state() -> dict:
    """Every RNG a run draws from, as tensors and plain values (weights-only safe)."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what we save)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
