"""A compiled training loss: the model/guide pair traced once into a pure-torch graph.

Pyro builds its traces in Python at every step (effect handlers, site dictionaries,
log-density bookkeeping); for small models that overhead, not arithmetic, dominates a step.
For a model whose structure does not depend on the data values, the whole loss
-ELBO(x; params) (noise draws included) can be recorded once with ``torch.jit.trace`` and
replayed as a single graph. Each recording is *verified* before it is used: from the same
RNG state, the traced and the eager loss and every parameter gradient must agree on a
batch other than the one it was recorded on. Any failure (tracing error, mismatch) falls
back to the eager loss for good, with a warning that says why; the RNG state is left as it
was, so the training trajectory is the same on either path up to rounding.

Which path a run takes is decided by a fixed rule, never by timing, so a seed reproduces a
run bit for bit and a resumed run takes the same path at every step as an uninterrupted
one: ``fit(jit="auto")`` (the default) uses the graph when :func:`graph_pays_off` says so
(the per-step arithmetic, parameters x batch rows, is at most ``GRAPH_MAX_WORK``: Python's
per-step overhead then dominates, as on the small digits VAE, where the graph is 0.9x of a
hand-written eager step; above it, as on the large VAE, the TorchScript graph was measured
5-13% slower than eager and eager is used). The graph for the training batch shape is
recorded, verified and warmed up (``GRAPH_WARMUP`` runs, in which TorchScript profiles and
optimizes it) before the first step, with the RNG state restored, so every training step
runs the same optimized graph.

``backend="inductor"`` goes one step further: the verified TorchScript graph (pure torch,
static shapes) is re-recorded as an aten-level FX graph and compiled by ``torch.compile``
(TorchInductor: fused elementwise kernels, forward and backward, compiled once per batch
shape). Its random draws call the same aten generator ops as eager (``fallback_random``), so
it is verified against the eager loss exactly like the TorchScript graph; if compiling or
the check fails, the TorchScript graph is used instead, with a warning. Compiling takes
seconds to a minute the first time (a C++ compiler builds the kernels; later runs hit
inductor's on-disk cache), so it pays off for long runs of large models only.

On CPU with glibc, a step's large temporaries (activations and their gradients, megabytes
each) are freed at the top of the heap, and glibc's default of returning freed memory at the
top to the system beyond a few megabytes means each step faults the same memory back in
page by page (thousands of page faults a step, ~30% of the step on the large digits VAE).
:func:`retain_freed_memory` keeps it in the process instead; :class:`CompiledLoss` calls it
once (set ``LVM_PYRO_RETAIN_FREED_MEMORY=0`` to leave the allocator alone).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Callable, Sequence

import torch

from lvm_pyro.infer.checkpoint import get_rng_state, set_rng_state

#: Graph runs (forward and backward) before training: TorchScript profiles and optimizes a
#: graph on its first runs, so every training step then runs the same optimized graph.
GRAPH_WARMUP = 3

#: Above this many parameter elements x batch rows per step the eager path is used by default.
GRAPH_MAX_WORK = 2**27

#: The estimators whose loss is a pure function of (batch, parameters, noise).
COMPILABLE = ("reparam", "meanfield", "iwae")

#: "script": the TorchScript graph; "inductor": that graph compiled by torch.compile.
BACKENDS = ("script", "inductor")

#: glibc malloc settings: blocks below 32 MiB (glibc's own cap of its adaptive threshold)
#: come from the heap, and the heap is handed back to the system only past 256 MiB free.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
_malloc_tuned: bool | None = None


def retain_freed_memory() -> bool:
    """Keep freed heap memory in the process for reuse (glibc only; once per process).

    Returns True if glibc's ``mallopt`` accepted the settings (``MMAP_THRESHOLD``,
    ``TRIM_THRESHOLD``). This is process-wide and lasts: freed memory up to
    ``TRIM_THRESHOLD`` stays mapped instead of being returned to the system, which saves
    re-faulting it on the next training step. A no-op elsewhere (macOS, Windows, musl) and
    when the environment variable ``LVM_PYRO_RETAIN_FREED_MEMORY`` is ``0``.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if os.environ.get("LVM_PYRO_RETAIN_FREED_MEMORY", "1") != "0":
            try:
                mallopt = ctypes.CDLL(None).mallopt
                mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError, TypeError):  # no glibc
                pass
    return _malloc_tuned


def graph_pays_off(params: Sequence[torch.Tensor], batch_rows: int) -> bool:
    """The rule of ``fit(jit="auto")``: is a compiled graph used for this model and batch size?

    Yes when sum(parameter elements) x batch rows <= ``GRAPH_MAX_WORK`` (2^27): the step is
    then small enough for Python's per-step overhead, which the graph removes, to matter. A
    function of the model and the batch size only, so reruns and resumptions decide alike.

    Example:
        >>> graph_pays_off([torch.zeros(1000, 100)], batch_rows=128)
        True
        >>> graph_pays_off([torch.zeros(1000, 1000)], batch_rows=1024)
        False
    """
    return sum(p.numel() for p in params) * batch_rows <= GRAPH_MAX_WORK


class CompiledLoss:
    """``loss_fn(*batch, beta)`` compiled per input signature, with a verified eager fallback.

    ``params`` are every tensor the loss reads (they become inputs of the graph, so the
    optimizer's in-place updates are seen); ``beta`` is the KL warm-up factor as a 0-d tensor.
    ``backend`` is "script" (TorchScript) or "inductor" (the TorchScript graph compiled by
    ``torch.compile``; ``inductor_fallback`` says why it was not used, if it was not).

    :meth:`prepare` records the graph of a batch shape before training (recorded on one
    batch, verified on another, warmed up); a shape first met in ``__call__`` is recorded,
    verified and warmed up on that batch. Either way a signature's path is fixed from its
    first use: the graph, or eager for good after a failed check (with a warning).

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> loss = CompiledLoss(lambda x, beta: (w * x).sum() * beta, [w])
        >>> float(loss((torch.ones(2, 3),), beta=torch.tensor(2.0)))
        12.0
    """

    def __init__(self, loss_fn: Callable, params: Sequence[torch.Tensor], rtol: float = 1e-4,
                 backend: str = "script"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.backend = backend
        self.inductor_fallback: str | None = None
        self.loss_fn = loss_fn
        self.params = list(params)
        self.rtol = rtol
        self.graphs: dict[tuple, Callable] = {}
        self.fallback_reason: str | None = None
        if any(p.device.type == "cpu" for p in self.params):
            retain_freed_memory()

    @property
    def active(self) -> bool:
        """True while compiled graphs are in use (False after a fallback)."""
        return self.fallback_reason is None

    def eager(self, batch: tuple, beta: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(*batch, beta)

    @staticmethod
    def signature(batch: tuple) -> tuple:
        return tuple((tuple(t.shape), t.dtype, t.device) for t in batch)

    def prepare(self, batch: tuple, check_batch: tuple, beta: torch.Tensor) -> bool:
        """Record the graph on ``batch``, verify it against eager on ``check_batch`` (same
        shapes, other values), warm it up; the RNG state is left as it was. True if it is used."""
        if self.active and self.signature(batch) not in self.graphs:
            graph = self._trace_and_verify(batch, check_batch, beta)
            if graph is not None:
                self.graphs[self.signature(batch)] = graph
        return self.active and self.signature(batch) in self.graphs

    def __call__(self, batch: tuple, beta: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.eager(batch, beta)
        if self.signature(batch) not in self.graphs and not self.prepare(batch, batch, beta):
            return self.eager(batch, beta)
        return self.graphs[self.signature(batch)](*batch, beta, *self.params)

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self.graphs.clear()
        warnings.warn(f"the compiled loss is not used ({reason}); training continues on the eager "
                      "path (pass jit=False to skip the attempt)", stacklevel=4)

    def _grads(self, loss: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]

    def _trace_and_verify(self, record_batch: tuple, check_batch: tuple, beta: torch.Tensor):
        n = len(record_batch)

        def flat(*args):
            return self.loss_fn(*args[:n], args[n])

        rng = get_rng_state()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = torch.jit.trace(flat, (*record_batch, beta, *self.params), check_trace=False)
            set_rng_state(rng)  # tracing ran the loss once: undo its draws
            same = self._matches_eager(graph, check_batch, beta)
        except Exception as exc:  # tracing can fail in many ways; every one means "use eager"
            set_rng_state(rng)
            self._fall_back(f"tracing failed: {type(exc).__name__}: {exc}")
            return None
        if not same:
            self._fall_back(
                "the traced loss or its gradients differ from the eager ones; the model's "
                "structure or control flow probably depends on the data"
            )
            return None
        if self.backend == "inductor" and self.inductor_fallback is None:
            compiled = self._inductor(graph, record_batch, check_batch, beta)
            graph = graph if compiled is None else compiled
        self._warm_up(graph, check_batch, beta)
        return graph

    def _warm_up(self, graph: Callable, batch: tuple, beta: torch.Tensor) -> None:
        """Run the graph forward and backward ``GRAPH_WARMUP`` times from the current RNG state,
        which is restored: the executor's profiling runs happen here, not in training steps."""
        rng = get_rng_state()
        try:
            for _ in range(GRAPH_WARMUP):
                set_rng_state(rng)
                self._grads(graph(*batch, beta, *self.params))
        finally:
            set_rng_state(rng)

    def _matches_eager(self, fn: Callable, batch: tuple, beta: torch.Tensor) -> bool:
        """From one RNG state, do ``fn`` and the eager loss give the same loss and gradients?

        The RNG state is left as it was.
        """
        rng = get_rng_state()
        try:
            eager_loss = self.eager(batch, beta)
            eager_grads = self._grads(eager_loss)
            set_rng_state(rng)
            loss = fn(*batch, beta, *self.params)
            grads = self._grads(loss)
        finally:
            set_rng_state(rng)
        return torch.allclose(loss, eager_loss, rtol=self.rtol, atol=1e-6) and all(
            torch.allclose(t, e, rtol=self.rtol, atol=1e-5 * (1 + _max_abs(e)))
            for t, e in zip(grads, eager_grads)
        )

    def _inductor(self, graph: Callable, record_batch: tuple, check_batch: tuple, beta: torch.Tensor):
        """The TorchScript graph as an aten FX graph compiled by TorchInductor, verified; or None."""
        from torch.fx.experimental.proxy_tensor import make_fx

        rng = get_rng_state()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.no_grad():  # record the forward ops; AOTAutograd derives the backward
                    fx_graph = make_fx(lambda *args: graph(*args))(
                        *record_batch, beta, *(p.detach() for p in self.params))
                set_rng_state(rng)
                compiled = torch.compile(fx_graph, backend="inductor", dynamic=False, fullgraph=True,
                                         options={"fallback_random": True})
                same = self._matches_eager(compiled, check_batch, beta)  # compiles on first call
        except Exception as exc:  # no compiler, unsupported op, ...: keep the TorchScript graph
            set_rng_state(rng)
            reason = f"compiling failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return self._inductor_failed(reason)
        if not same:
            return self._inductor_failed("the compiled loss or its gradients differ from the eager ones")
        return compiled

    def _inductor_failed(self, reason: str) -> None:
        self.inductor_fallback = reason
        warnings.warn(f"torch.compile is not used ({reason}); the TorchScript graph is used instead",
                      stacklevel=5)
        return None


def _max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0
