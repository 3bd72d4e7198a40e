"""A compiled training loss: the model/guide pair traced once into a pure-torch graph.

Pyro builds its traces in Python at every step (effect handlers, site dictionaries,
log-density bookkeeping); for small models that overhead, not arithmetic, dominates a step.
For a model whose structure does not depend on the data values, the whole loss
-ELBO(x; params) (noise draws included) can be recorded once with ``torch.jit.trace`` and
replayed as a single graph. Each recording is *verified* before it is used: from the same
RNG state, the traced and the eager loss and every parameter gradient must agree on a
batch other than the one it was recorded on. Any failure (tracing error, mismatch) falls
back to the eager loss for good, with a warning that says why; the RNG state is left as it
was, so the training trajectory is the same on either path. Whether the graph is faster is
measured, not assumed: the first steps alternate between graph and eager, and the faster
path is kept (see :meth:`CompiledLoss.record`).
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Sequence

import torch

from lvm_pyro.infer.checkpoint import get_rng_state, set_rng_state

#: Graph runs left out of the timed trial: TorchScript profiles and optimizes a graph first.
GRAPH_WARMUP = 3

#: The estimators whose loss is a pure function of (batch, parameters, noise).
COMPILABLE = ("reparam", "meanfield", "iwae")


class CompiledLoss:
    """``loss_fn(*batch, beta)`` compiled per input signature, with a verified eager fallback.

    ``params`` are every tensor the loss reads (they become inputs of the graph, so the
    optimizer's in-place updates are seen); ``beta`` is the KL warm-up factor as a 0-d tensor.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> loss = CompiledLoss(lambda x, beta: (w * x).sum() * beta, [w])
        >>> float(loss((torch.ones(2, 3),), beta=torch.tensor(2.0)))
        12.0
    """

    def __init__(self, loss_fn: Callable, params: Sequence[torch.Tensor], rtol: float = 1e-4,
                 trial_steps: int = 12):
        self.loss_fn = loss_fn
        self.params = list(params)
        self.rtol = rtol
        self.trial_steps = trial_steps
        self.graphs: dict[tuple, Callable] = {}
        self.fallback_reason: str | None = None
        self.speedup: float | None = None
        self._pending: dict[tuple, tuple] = {}
        self._trial: dict[str, list[float]] = {"graph": [], "eager": []}
        self._path = "eager"
        self._graph_runs = 0

    @property
    def active(self) -> bool:
        """True while compiled graphs are in use (False after a fallback or a slower trial)."""
        return self.fallback_reason is None

    def eager(self, batch: tuple, beta: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(*batch, beta)

    def record(self, seconds: float) -> None:
        """The wall time of the whole step just taken (loss, backward, optimizer).

        Once a graph exists, steps alternate between it and the eager loss (the same
        numbers either way) for ``trial_steps`` each; the faster path by median is kept.
        A graph does not pay off for every model: for large layers the eager kernels win.
        """
        if self.speedup is not None or not self.graphs or not self.active:
            return
        if self._path == "graph":
            self._graph_runs += 1
            if self._graph_runs <= GRAPH_WARMUP:  # the executor profiles and optimizes first
                return
        self._trial[self._path].append(seconds)
        graph, eager = self._trial["graph"], self._trial["eager"]
        if min(len(graph), len(eager)) >= self.trial_steps:
            self.speedup = statistics.median(eager) / statistics.median(graph)
            if self.speedup < 1.0:
                self.fallback_reason = f"the eager loss was faster ({1 / self.speedup:.2f}x) in a timed trial"
                self.graphs.clear()

    def __call__(self, batch: tuple, beta: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.eager(batch, beta)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in batch)
        graph = self.graphs.get(key)
        if graph is not None:
            if self.speedup is None:  # in the timed trial: alternate
                self._path = "eager" if self._path == "graph" else "graph"
                if self._path == "eager":
                    return self.eager(batch, beta)
            return graph(*batch, beta, *self.params)
        if key not in self._pending:
            # Record on this batch, verify on the next one of the same signature.
            self._pending[key] = tuple(t.clone() for t in batch)
            return self.eager(batch, beta)
        recorded_on = self._pending.pop(key)
        graph = self._trace_and_verify(recorded_on, batch, beta)
        if graph is None:
            return self.eager(batch, beta)
        self.graphs[key] = graph
        return graph(*batch, beta, *self.params)

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
            set_rng_state(rng)
            eager_loss = self.eager(check_batch, beta)
            eager_grads = self._grads(eager_loss)
            set_rng_state(rng)
            traced_loss = graph(*check_batch, beta, *self.params)
            traced_grads = self._grads(traced_loss)
        except Exception as exc:  # tracing can fail in many ways; every one means "use eager"
            set_rng_state(rng)
            self._fall_back(f"tracing failed: {type(exc).__name__}: {exc}")
            return None
        set_rng_state(rng)
        same = torch.allclose(traced_loss, eager_loss, rtol=self.rtol, atol=1e-6) and all(
            torch.allclose(t, e, rtol=self.rtol, atol=1e-5 * (1 + _max_abs(e)))
            for t, e in zip(traced_grads, eager_grads)
        )
        if not same:
            self._fall_back(
                "the traced loss or its gradients differ from the eager ones; the model's "
                "structure or control flow probably depends on the data"
            )
            return None
        return graph


def _max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0
