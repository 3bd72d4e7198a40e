"""Opt-in tuning of glibc's malloc for training loops: keep freed memory in the process.

With glibc's defaults a block of 128 KiB or more (a threshold glibc raises adaptively, up to
32 MiB on 64-bit systems) is mapped afresh with ``mmap`` and unmapped when freed, and free
memory at the top of the heap past 128 KiB is handed back to the system. A training step that
frees and reallocates the same large activations each step then pays for page faults on
every step. :func:`retain_freed_memory` raises both thresholds for the duration of a block,
so those blocks come from the heap and stay mapped for reuse::

    from lvm_pyro.allocator import retain_freed_memory

    with retain_freed_memory(limit_bytes=256 << 20):
        fit(model, data, epochs=300)

Nothing in lvm_pyro calls this by itself: malloc's settings are process-wide, so they change
only where the user asks. This module is the one place in the package that uses ``ctypes``.

What "restore" means: glibc has ``mallopt`` to set ``M_TRIM_THRESHOLD`` and
``M_MMAP_THRESHOLD`` but no call to read them back. On leaving the block each is set back to
the value in force when the process started: the ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_MMAP_THRESHOLD_`` environment variable if it was set (glibc reads those at start-up),
else glibc's default (128 KiB for both). Two consequences:

- a value set with ``mallopt`` by other code before the block is not known and is replaced
  by the start-up value;
- glibc's adaptive mmap threshold (raised as large blocks are freed) is switched off by any
  ``mallopt`` of these parameters, also by the restore: after the block the thresholds are
  fixed at their start-up values rather than adapting. Setting the environment variables
  above has the same effect, so a process that needs exactly glibc's adaptive behaviour
  should not use this module.

Where glibc's ``mallopt`` is not found (macOS, Windows, musl), the block changes nothing and
yields False.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEFAULT_LIMIT", "GLIBC_DEFAULT_THRESHOLD", "MMAP_THRESHOLD_MAX", "retain_freed_memory"]

#: How much free heap memory stays mapped, by default, inside :func:`retain_freed_memory`.
DEFAULT_LIMIT = 256 << 20
#: glibc's default ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD`` (128 KiB).
GLIBC_DEFAULT_THRESHOLD = 128 << 10
#: The largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``).
MMAP_THRESHOLD_MAX = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
_ENV = {_M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", _M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}
_LOCK = threading.Lock()
_DEPTH = 0


def _mallopt():
    """glibc's ``mallopt(param, value) -> 1 on success``, or None where there is none."""
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def _startup_env() -> dict[str, str]:
    """The environment the process started with (what glibc read), where Linux shows it."""
    try:
        with open("/proc/self/environ", "rb") as f:
            pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    except OSError:
        return dict(os.environ)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _startup_value(param: int, env: dict[str, str] | None = None) -> int:
    """The value of a threshold glibc started with: its environment variable, else the default."""
    raw = (_startup_env() if env is None else env).get(_ENV[param], "")
    try:
        value = int(raw, 10)
    except ValueError:
        return GLIBC_DEFAULT_THRESHOLD
    return value if value >= 0 else GLIBC_DEFAULT_THRESHOLD


@contextmanager
def retain_freed_memory(limit_bytes: int = DEFAULT_LIMIT) -> Iterator[bool]:
    """Inside the block, glibc's malloc keeps up to ``limit_bytes`` of freed heap memory mapped
    for reuse and serves blocks below min(limit_bytes, 32 MiB) from the heap; on leaving, both
    thresholds go back to their start-up values (see the module docstring for what that means
    for glibc). Yields True if glibc accepted the settings, False where there is no glibc.

    ``M_TRIM_THRESHOLD = limit_bytes``, ``M_MMAP_THRESHOLD = min(limit_bytes, 32 MiB)``.
    Nested blocks keep the outer block's settings; the outermost one restores.

    Example:
        >>> with retain_freed_memory(64 << 20) as tuned:
        ...     buffers = [bytearray(1 << 20) for _ in range(8)]
        >>> tuned in (True, False)
        True
    """
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or not 0 < limit_bytes < 2**31:
        from lvm_pyro.errors import ConfigurationError

        raise ConfigurationError(
            f"limit_bytes={limit_bytes!r}: pass a whole number of bytes in (0, 2**31), e.g. 256 << 20"
        )
    global _DEPTH
    mallopt = _mallopt()
    if mallopt is None:
        yield False
        return
    with _LOCK:
        _DEPTH += 1
        outer = _DEPTH == 1
        tuned = True
        if outer:
            tuned = bool(mallopt(_M_MMAP_THRESHOLD, min(limit_bytes, MMAP_THRESHOLD_MAX))) and bool(
                mallopt(_M_TRIM_THRESHOLD, limit_bytes)
            )
    try:
        yield tuned
    finally:
        with _LOCK:
            _DEPTH -= 1
            if outer:
                mallopt(_M_MMAP_THRESHOLD, _startup_value(_M_MMAP_THRESHOLD))
                mallopt(_M_TRIM_THRESHOLD, _startup_value(_M_TRIM_THRESHOLD))
