"""CPU work over chunks of rows: single-threaded operations, whole chunks spread over threads.

The Gaussian mixture's E-step (and its log-density, posterior and data checks) runs about
ten small torch operations per chunk of rows. With torch's intra-op threads each of them is a
fork-join over all cores, which costs more than the operation itself, and far more when a
core is busy with other work (measured: 0.09 s single-threaded against 0.6-4 s with two
threads on a loaded machine, for the same E-steps). So inside :func:`single_threaded` torch's
operations run on one thread, and :func:`run_chunks` hands whole chunks out in turn to as many
threads as torch would use (this one plus pool threads), so that a free core takes over the
work of a busy one.

Only public settings are used, and each is put back on leaving:

- this thread: ``torch.set_num_threads(1)``, restored to ``torch.get_num_threads()`` as found
  (torch applies it to its OpenMP runtime and to MKL; torch's inter-op threads are untouched);
- a pool thread, while it runs chunks: the OpenMP runtimes loaded in the process limited to
  one thread for that thread through ``threadpoolctl`` (OpenMP's setting is per thread), and
  restored when the chunks are done.

While a block runs, ``torch.get_num_threads()`` reads 1 in every thread of the process (torch
keeps one number); other threads' torch work started meanwhile runs single-threaded too. On
CUDA everything runs as before: one thread of chunks, torch's own threading.
"""

from __future__ import annotations

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
_OPENMP = None  # threadpoolctl's controller of the process's OpenMP runtimes, made on first use


def _openmp():
    """threadpoolctl's view of the OpenMP runtimes loaded now (torch's among them); found once."""
    global _OPENMP
    if _OPENMP is None:
        from threadpoolctl import ThreadpoolController

        _OPENMP = ThreadpoolController().select(user_api="openmp")
    return _OPENMP


def _pool(workers: int) -> ThreadPoolExecutor:
    """The pool threads (a new pool after a fork: the parent's threads are not in the child)."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL[1] < workers or _POOL[2] != os.getpid():
            _POOL = (ThreadPoolExecutor(workers, thread_name_prefix="lvm_pyro_chunks"), workers, os.getpid())
        return _POOL[0]


@contextmanager
def single_threaded(device: torch.device):
    """Run torch's CPU operations single-threaded inside the block (``torch.set_num_threads(1)``,
    restored on leaving); yields how many threads the chunks may use (torch's setting as found;
    1 on other devices or inside another such block).

    The operations here are per chunk or on K x D parameters: too small for torch's intra-op
    threads, whose fork-join per operation costs more than the operation (much more when a
    core is busy with other work); :func:`run_chunks` spreads whole chunks over threads
    instead.

    Example:
        >>> before = torch.get_num_threads()
        >>> with single_threaded(torch.device("cpu")) as threads:
        ...     inside = torch.get_num_threads()
        >>> (threads, inside, torch.get_num_threads()) == (before, 1, before)
        True
    """
    if device.type != "cpu" or getattr(_BUSY, "active", False):
        yield 1
        return
    threads = torch.get_num_threads()
    _BUSY.active = True
    try:
        if threads != 1:
            torch.set_num_threads(1)
        yield threads
    finally:
        _BUSY.active = False
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


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
    openmp = _openmp()

    def take(slot: int) -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            body(i, slot)

    def work(slot: int) -> None:
        if slot == 0:
            take(slot)
            return
        with openmp.limit(limits=1):  # this pool thread's OpenMP setting, put back after
            take(slot)

    futures = [_pool(threads - 1).submit(work, slot) for slot in range(1, threads)]
    try:
        work(0)
    finally:
        wait(futures)
    for f in futures:
        f.result()
