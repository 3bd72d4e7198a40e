"""CPU work over chunks of rows: single-threaded operations, whole chunks spread over threads.

The Gaussian mixture's E-step (and its log-density, posterior and data checks) runs about
ten small torch operations per chunk of rows. With torch's intra-op threads each of them is a
fork-join over all cores, which costs more than the operation itself, and far more when a
core is busy with other work (measured: 0.09 s single-threaded against 0.6-4 s with two
threads on a loaded machine, for the same E-steps). So inside :func:`single_threaded` this
thread's operations run on one core, and :func:`run_chunks` hands whole chunks out in turn to
as many threads as torch would use (this one plus pool threads), so that a free core takes
over the work of a busy one.

``torch.set_num_threads`` cannot do this: it also switches MKL's dynamic threading off for
the rest of the process. Instead the OpenMP runtime torch ships (``torch/lib/libgomp.so.1``)
and MKL's per-thread setting are called through ctypes, checked to be the ones torch runs on,
and restored exactly afterwards. Where they are not found (other builds, macOS, Windows) or
on CUDA, everything runs as before: one thread of chunks, torch's own threading.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import torch

__all__ = ["run_chunks", "single_threaded"]

_POOL: tuple[ThreadPoolExecutor, int, int] | None = None
_LOCK = threading.Lock()
_BUSY = threading.local()


class _Threading:
    """torch's OpenMP runtime (the libgomp in torch/lib) and MKL's per-thread setting, to
    make one thread's operations single-threaded and restore them exactly (torch.set_num_threads
    would also switch off MKL's dynamic threading for good); None where they are not found."""

    def __init__(self) -> None:
        self.omp = self.mkl_local = None
        lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
        try:
            gomp = ctypes.CDLL(os.path.join(lib_dir, "libgomp.so.1"))
            gomp.omp_set_num_threads.argtypes = [ctypes.c_int]
            gomp.omp_get_max_threads.restype = ctypes.c_int
        except (OSError, AttributeError):
            return
        self.omp = gomp
        if torch.backends.mkl.is_available():
            try:
                mkl = ctypes.CDLL(os.path.join(lib_dir, "libtorch_cpu.so")).MKL_Set_Num_Threads_Local
                mkl.argtypes, mkl.restype = [ctypes.c_int], ctypes.c_int
                self.mkl_local = mkl
            except (OSError, AttributeError):
                self.omp = None  # MKL's own setting would keep its threads: leave threading alone
                return
        # the library found must be the one torch runs on
        saved = self.single()
        if torch.get_num_threads() != 1:
            self.omp = self.mkl_local = None
        else:
            self.restore(saved)

    def single(self) -> tuple[int, int | None]:
        """Make this thread's operations single-threaded; returns what restore() needs."""
        torch.get_num_threads()  # torch's per-thread initialization first: it would reset this
        saved = self.omp.omp_get_max_threads()
        self.omp.omp_set_num_threads(1)
        return saved, self.mkl_local(1) if self.mkl_local is not None else None

    def restore(self, saved: tuple[int, int | None]) -> None:
        self.omp.omp_set_num_threads(saved[0])
        if self.mkl_local is not None:
            self.mkl_local(saved[1])


_THREADING: _Threading | None = None


def _threading() -> _Threading:
    global _THREADING
    if _THREADING is None:
        _THREADING = _Threading()
    return _THREADING


def _pool(workers: int) -> ThreadPoolExecutor:
    """The pool threads (a new pool after a fork: the parent's threads are not in the child)."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL[1] < workers or _POOL[2] != os.getpid():
            _POOL = (ThreadPoolExecutor(workers, thread_name_prefix="lvm_pyro_chunks"), workers, os.getpid())
        return _POOL[0]


@contextmanager
def single_threaded(device: torch.device):
    """Run this thread's torch operations single-threaded inside the block (restored after);
    yields how many threads the chunks may use (torch's setting; 1 where this is not possible).

    The operations here are per chunk or on K x D parameters: too small for torch's intra-op
    threads, whose fork-join per operation costs more than the operation (much more when a
    core is busy with other work); :func:`run_chunks` spreads whole chunks over threads
    instead."""
    rt = _threading() if device.type == "cpu" else None
    if rt is None or rt.omp is None or getattr(_BUSY, "active", False):
        yield 1
        return
    threads = torch.get_num_threads()
    saved = rt.single()
    _BUSY.active = True
    try:
        yield threads
    finally:
        _BUSY.active = False
        rt.restore(saved)


def run_chunks(indices: range, body: Callable[[int, int], None], threads: int) -> None:
    """Call body(i, slot) for every chunk index i, on up to ``threads`` threads (this one and
    pool threads whose operations are single-threaded; slot in range(threads) names the
    thread, for its buffers). The chunks are handed out in turn, so a free core takes over
    the work of a busy one; the result must not depend on which thread ran a chunk."""
    threads = min(threads, len(indices))
    if threads <= 1:
        for i in indices:
            body(i, 0)
        return
    todo, lock = iter(indices), threading.Lock()

    def work(slot: int) -> None:
        if slot and not getattr(_BUSY, "single", False):
            _threading().single()  # a pool thread of ours: single-threaded for good
            _BUSY.single = True
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            body(i, slot)

    futures = [_pool(threads - 1).submit(work, slot) for slot in range(1, threads)]
    try:
        work(0)
    finally:
        wait(futures)
    for f in futures:
        f.result()
