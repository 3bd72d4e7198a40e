"""Checkpoints: one writer per run directory, atomic writes, weights-only reads.

A checkpoint holds only tensors and plain Python values (no pickled objects): model
state, trained parameters, optimizer state, RNG states, counters, history, the
configuration and the run's *identity* (what a resumed run may not change). It is written
to a temporary file in the same folder, flushed to disk, renamed over the old one and the
folder entry synced, so a crash mid-write leaves the previous checkpoint intact; temporary
files a killed run left behind are removed by the next writer. It is read with
``torch.load(weights_only=True)``; a file holding pickled objects is refused as not written
by lvm_pyro (it may be unsafe to load).

A run directory has one writer at a time: :class:`RunLock` holds an exclusive
``fcntl.flock`` on ``DIR/.lock`` for the whole of ``fit`` (POSIX systems; elsewhere no lock
is taken), so a second process writing to the same directory is refused at once.
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

try:  # POSIX only: without it the directory is not locked
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"
FORMAT = "lvm_pyro.checkpoint/2"
#: what every checkpoint of this format holds (a file missing one is refused before use)
REQUIRED_KEYS = ("module", "params", "param_store", "optimizer", "rng", "shuffle_state", "counters",
                 "history", "callbacks", "config", "identity")
_TMP_SUFFIX = ".tmp"


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """The checkpoint file inside a run directory."""
    return Path(directory) / CHECKPOINT_NAME


def prepare_directory(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and make sure it can be written, before training starts.

    Example:
        >>> import tempfile; prepare_directory(tempfile.mkdtemp()).is_dir()
        True
    """
    if not isinstance(directory, (str, os.PathLike)) or str(directory) == "":
        raise CheckpointError(f"checkpoint_dir={directory!r}: pass a folder path (a str or pathlib.Path)")
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", suffix=_TMP_SUFFIX):
            pass
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint directory {str(path)!r} cannot be written ({exc.strerror or exc}): "
            "pass a writable checkpoint_dir"
        ) from exc
    return path


class RunLock:
    """An exclusive, non-blocking lock on a run directory (``DIR/.lock``), held until released.

    A second holder, in this process or another, gets a :class:`CheckpointError` at once. The
    operating system drops the lock when the holder dies (kill -9 included), so a stale lock
    file never blocks a later run.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with RunLock(d):
        ...     try:
        ...         RunLock(d).acquire()
        ...     except CheckpointError:
        ...         print("refused")
        refused
    """

    def __init__(self, directory: str | os.PathLike, name: str = LOCK_NAME, busy: str | None = None) -> None:
        self.path = Path(directory) / name
        self.busy = busy or (
            f"another process is writing to {str(self.path.parent)!r} (it holds {name}): "
            "wait for it to finish, or pass a new checkpoint_dir"
        )
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:  # pragma: no cover (no flock: one writer is the user's responsibility)
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(
                f"{str(self.path.parent)!r} cannot be locked ({exc.strerror}): check that the folder "
                "exists and is writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointError(self.busy) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stray_files(directory: str | os.PathLike) -> list[str]:
    """Delete the temporary files an interrupted writer left in ``directory`` (call it while
    holding the directory's :class:`RunLock`); returns their names."""
    removed = []
    for entry in Path(directory).iterdir():
        name = entry.name
        ours = name.startswith((f".{CHECKPOINT_NAME}.", ".write-test-")) and name.endswith(_TMP_SUFFIX)
        if ours and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(name)
    return removed


def refuse_overwrite(directory: str | os.PathLike) -> None:
    """A new run may not replace another run's checkpoint: refuse a directory that holds one."""
    path = checkpoint_path(directory)
    if path.exists():
        raise CheckpointError(
            f"{str(directory)!r} already holds the checkpoint of a run: pass resume=True to "
            "continue that run, or a new (or empty) checkpoint_dir to start another one"
        )


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms that cannot open a folder)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write a file atomically: ``write(f)`` into a temporary file in the same folder, fsync,
    rename over ``path``, fsync the folder. A failure leaves the old file (if any) intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically (see :func:`atomic_write`).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.pt")
        >>> save_checkpoint(p, {"step": 1}); load_checkpoint(p)["step"]
        1
    """
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def _not_ours(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is not a checkpoint lvm_pyro wrote ({what}); it was not loaded, since "
        "a file of unknown origin may be unsafe to unpickle: resume only from a checkpoint_dir "
        "written by lvm_pyro's fit, or start a new run in a new checkpoint_dir"
    )


def load_checkpoint(path: str | os.PathLike, *, complete: bool = False) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors map to the CPU).

    Refuses, with :class:`CheckpointError`, a missing file, a truncated or foreign file, and
    any file that needs unpickling Python objects (``weights_only=True``). With
    ``complete=True`` the file must also hold everything ``fit`` needs to resume.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}: train with checkpoint_dir=... first, or drop resume=True"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message advises weights_only=False: wrong advice for a file of unknown origin
        if "global" in str(exc).lower():
            raise _not_ours(path, "it holds pickled Python objects") from None
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (corrupt, or not a torch file): resume "
            "from an intact checkpoint written by lvm_pyro, or start a new run"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint ({type(exc).__name__}: truncated or "
            "not a torch file): resume from an intact checkpoint, or start a new run"
        ) from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("lvm_pyro.checkpoint/"):
        raise _not_ours(path, f"no {FORMAT} header")
    if state["format"] != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} was written by another version of lvm_pyro ({state['format']}, this one "
            f"reads {FORMAT}): its run cannot be resumed exactly; start a new run in a new checkpoint_dir"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state] if complete else []
    if missing:
        raise CheckpointError(f"{str(path)!r} is incomplete (no {', '.join(missing)}): it cannot be resumed")
    return state


def identity_differences(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's run identity and this run's, one line each.

    ``parameters`` (name -> shape) are compared name by name; every other entry by value.

    Example:
        >>> identity_differences({"estimator": "reparam"}, {"estimator": "iwae"})
        ["estimator='reparam' in the checkpoint, estimator='iwae' now"]
    """
    lines = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if key == "parameters" and isinstance(old, dict) and isinstance(new, dict):
            changed = [
                f"{n}: {old.get(n, 'absent')} in the checkpoint, {new.get(n, 'absent')} now"
                for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)
            ]
            if changed:
                more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
                lines.append("model parameters differ: " + "; ".join(changed[:5]) + more)
        elif old != new:
            lines.append(f"{key}={old!r} in the checkpoint, {key}={new!r} now")
    return lines


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
