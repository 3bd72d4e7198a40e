"""Graph capture of a training step on supported PyTorch APIs (``make_fx`` + TorchInductor).

Pyro builds its traces in Python at every step (effect handlers, site dictionaries,
log-density bookkeeping); for small models that overhead, not arithmetic, dominates a step.
For a model whose structure does not depend on the data values, one training step can be
recorded once as a graph of aten operations and replayed:

1. ``torch.fx.experimental.proxy_tensor.make_fx`` records the step in real mode, from the
   Pyro loss through its backward pass (``torch.autograd.grad``) and, with Adam/AdamW, the
   optimizer update (``mode="step"``: the whole step is one graph, updating parameters and
   the optimizer's own state tensors in place); other optimizers, gradient all-reduce
   (``distributed``) and ``mode="grad"`` record loss and gradients only and let the
   optimizer step eagerly.
2. ``torch._inductor.compile`` (AOTAutograd + TorchInductor: the compiler behind
   ``torch.compile``, applied to an FX graph without TorchDynamo) compiles it once per batch
   shape. Its results go to PyTorch's on-disk compile caches (FX graph cache, AOTAutograd
   cache; :func:`_cacheable` gives them the shape environment they key on), so a later run
   with the same model and shapes, in any process, reuses them: the first compile of a shape
   on a machine takes about half a minute (a C++ compiler builds the kernels), later ones
   load in well under a second, plus the recording (``FitResult.compile_time`` reports it).
3. Random draws call the same aten generator ops as eager (inductor's ``fallback_random``):
   they come from torch's global generator, so ``torch.get_rng_state`` in a checkpoint
   covers them and a resumed run draws what an uninterrupted one draws.
4. Before use, the compiled step is *verified* against the eager step (loss, backward,
   optimizer step) on a batch other than the one it was recorded on, from one RNG and
   parameter state: the loss, the updated parameters and the optimizer state (which holds
   the gradients) must agree to ``rtol`` (1e-4) with an absolute floor of 1e-5 x (1 + the
   largest entry). Any failure (recording, compiling, mismatch) falls back to the eager step
   for good, with a warning saying why. Parameters, optimizer state and the RNG state are
   left as they were.

Which path a run takes is decided by a fixed rule, never by timing (:func:`choose`), so a
seed reproduces a run bit for bit and a resumed run (which keeps the path its checkpoint
records) is exact. ``compile="auto"`` (the default) compiles only when the run is long
enough to repay the compile time: planned steps x parameter elements x batch rows >=
``AUTO_MIN_WORK`` and at least ``AUTO_MIN_STEPS`` steps. Measured on two cores with the
default VAE on the digits: recording, verifying and loading its compiled step from the cache
costs about 5 s in a new process (36 s the first time on a machine), and each compiled epoch
takes 0.035-0.054 s against 0.10-0.13 s eager, so a run of a few thousand steps repays it:
300 epochs (2,700 steps) compile and finish faster end to end
(``benchmarks/svi_end_to_end.py``). Short fits (a test suite) never compile.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lvm_pyro.errors import ConfigurationError
from lvm_pyro.infer.checkpoint import get_rng_state, set_rng_state

#: The objectives whose loss is a pure function of (batch, parameters, noise).
COMPILABLE = ("reparam", "meanfield", "iwae")

#: ``compile="auto"``: compile when planned steps x parameter elements x batch rows reach this
#: (the default VAE on the binarized digits, 300 epochs: 2,700 steps x 177k parameters x 128
#: rows = 6e10; a test's model of a few hundred parameters never does).
AUTO_MIN_WORK = 1e10
#: ... and the run has at least this many steps (the compile time is not repaid sooner).
AUTO_MIN_STEPS = 2_000

#: "step": loss, backward and (Adam/AdamW) optimizer update in one graph; "grad": loss and
#: gradients in the graph, the optimizer steps eagerly (any optimizer).
MODES = ("step", "grad")

#: inductor settings: random draws through torch's generator (same stream as eager).
INDUCTOR_OPTIONS = {"fallback_random": True}


@dataclass(frozen=True)
class Compilation:
    """How ``fit`` captures its training step (``fit(compile=...)``).

    ``enabled``: "auto" (compile when the run is long enough to repay it: :func:`choose`),
    True (always, for the objectives in ``COMPILABLE``) or False (never). ``mode``: "step"
    (the whole step, optimizer update included, where the optimizer is Adam/AdamW; else as
    "grad") or "grad" (loss and gradients only). ``rtol``: the tolerance of the check against
    eager.

    Example:
        >>> Compilation.of("auto").enabled, Compilation.of(False).enabled
        ('auto', False)
    """

    enabled: bool | str = "auto"
    mode: str = "step"
    rtol: float = 1e-4

    def __post_init__(self) -> None:
        if not (isinstance(self.enabled, bool) or self.enabled == "auto"):
            raise ConfigurationError(f"Compilation(enabled={self.enabled!r}): pass 'auto', True or False")
        if self.mode not in MODES:
            raise ConfigurationError(f"Compilation(mode={self.mode!r}): pass one of {', '.join(MODES)}")
        if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not self.rtol > 0:
            raise ConfigurationError(f"Compilation(rtol={self.rtol!r}): pass a positive number")

    @classmethod
    def of(cls, value, name: str = "compile") -> Compilation:
        """``fit``'s ``compile=`` value as a Compilation: "auto", True, False, a mode ("step",
        "grad"; "inductor" means True), or a Compilation."""
        if isinstance(value, Compilation):
            return value
        if isinstance(value, bool) or (isinstance(value, str) and value == "auto"):
            return cls(enabled=value)
        if isinstance(value, str) and value in MODES:
            return cls(enabled=True, mode=value)
        if isinstance(value, str) and value == "inductor":
            return cls(enabled=True)
        raise ConfigurationError(
            f"{name}={value!r}: pass 'auto' (a compiled step where the run is long enough to repay "
            "compiling), True (always), False (never), 'step' or 'grad' (what the graph holds), or "
            "a lvm_pyro.infer.compile.Compilation"
        )


def graph_pays_off(params: Sequence[torch.Tensor], batch_rows: int, steps: int) -> bool:
    """The rule of ``compile="auto"``: does compiling repay its cost for this run?

    Yes when steps >= ``AUTO_MIN_STEPS`` and steps x sum(parameter elements) x batch rows >=
    ``AUTO_MIN_WORK`` (1e10). A function of the model, the batch size and the planned number
    of steps only, so reruns decide alike.

    Example:
        >>> graph_pays_off([torch.zeros(177_000)], batch_rows=128, steps=2700)
        True
        >>> graph_pays_off([torch.zeros(177_000)], batch_rows=128, steps=1800)
        False
        >>> graph_pays_off([torch.zeros(1000)], batch_rows=128, steps=30_000)
        False
    """
    work = sum(p.numel() for p in params) * batch_rows * steps
    return steps >= AUTO_MIN_STEPS and work >= AUTO_MIN_WORK


def choose(compilation: Compilation, objective: str, params: Sequence[torch.Tensor], batch_rows: int,
           steps: int) -> tuple[bool, str]:
    """Compile or not, and why: the fixed rule (no timing)."""
    if compilation.enabled is False:
        return False, "compile=False"
    if objective not in COMPILABLE:
        return False, f"objective {objective!r} is not compiled (only {', '.join(COMPILABLE)})"
    if compilation.enabled is True:
        return True, "compile=True"
    if graph_pays_off(params, batch_rows, steps):
        return True, "auto: the run is long enough to repay compiling"
    return False, "auto: the run is too short to repay compiling"


def _adam_settings(opt: torch.optim.Optimizer) -> dict | None:
    """Adam/AdamW hyper-parameters if the update can go into the graph, else None."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or len(opt.param_groups) != 1:
        return None
    g = opt.param_groups[0]
    if g.get("amsgrad") or g.get("maximize") or g.get("differentiable") or torch.is_tensor(g["lr"]):
        return None
    decoupled = isinstance(opt, torch.optim.AdamW) or bool(g.get("decoupled_weight_decay"))
    return {"betas": tuple(float(b) for b in g["betas"]), "eps": float(g["eps"]),
            "weight_decay": float(g["weight_decay"]), "decoupled": decoupled}


def _init_adam_state(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
    """Torch's own lazy state initialization of Adam, done before the first step."""
    fused = bool(opt.param_groups[0].get("fused"))
    for p in params:
        state = opt.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class CompiledStep:
    """One training step ``loss_fn(batch, beta)`` -> backward -> optimizer update, compiled.

    ``params``: every tensor the loss trains (inputs of the graph). ``__call__(batch, beta)``
    runs the step and returns a 1-d tensor (loss, total gradient norm before clipping): in
    ``"step"`` mode the parameters and the optimizer state are updated by the graph (not at
    all when the loss or a gradient is not finite); in ``"grad"`` mode the gradients are left
    in ``.grad`` and the caller steps the optimizer. :meth:`prepare` records, compiles and
    verifies the graph of a batch shape; a shape not prepared runs the eager step.
    """

    def __init__(self, loss_fn: Callable, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
                 *, clip_norm: float | None = None, mode: str = "step", rtol: float = 1e-4,
                 eager_update: bool = False) -> None:
        self.loss_fn = loss_fn
        self.params = list(params)
        self.opt = optimizer
        self.clip_norm = clip_norm
        self.rtol = rtol
        self.adam = _adam_settings(optimizer) if mode == "step" and not eager_update else None
        self.mode = "step" if self.adam is not None else "grad"
        self.graphs: dict[tuple, Callable] = {}
        self.fallback_reason: str | None = None
        self.compile_time = 0.0
        self.lr = torch.zeros((), dtype=torch.float64)

    @property
    def active(self) -> bool:
        return self.fallback_reason is None

    @staticmethod
    def signature(batch: tuple) -> tuple:
        return tuple((tuple(t.shape), t.dtype, t.device) for t in batch)

    def has_graph(self, batch: tuple) -> bool:
        return self.active and self.signature(batch) in self.graphs

    # -- the functions recorded ---------------------------------------------------------------

    def _states(self) -> tuple[list, list, list]:
        states = [self.opt.state[p] for p in self.params]
        return [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]

    def _inputs(self, batch: tuple, beta: torch.Tensor) -> list:
        if self.mode == "grad":
            return [*batch, beta, *self.params]
        self.lr.fill_(self.opt.param_groups[0]["lr"])
        m, v, s = self._states()
        return [*batch, beta, self.lr, *self.params, *m, *v, *s]

    def _grads(self, batch: tuple, beta: torch.Tensor):
        loss = self.loss_fn(batch, beta)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return loss.detach(), norm, grads

    def _traced_fn(self, n: int) -> Callable:
        k = len(self.params)
        if self.mode == "grad":
            def grad_step(*args):
                loss, norm, grads = self._grads(tuple(args[:n]), args[n])
                return torch.stack([loss.to(norm.dtype), norm]), *grads
            return grad_step

        b1, b2 = self.adam["betas"]
        eps, wd, decoupled = self.adam["eps"], self.adam["weight_decay"], self.adam["decoupled"]
        clip = self.clip_norm

        def whole_step(*args):
            batch, beta, lr = tuple(args[:n]), args[n], args[n + 1]
            rest = args[n + 2:]
            ps, ms, vs, ss = rest[:k], rest[k:2 * k], rest[2 * k:3 * k], rest[3 * k:]
            loss, norm, grads = self._grads(batch, beta)
            with torch.no_grad():
                ok = torch.isfinite(loss) & torch.isfinite(norm)
                if clip is not None:
                    coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
                    grads = [g * coef for g in grads]
                for p, g, m, v, s in zip(ps, grads, ms, vs, ss):
                    if wd and not decoupled:
                        g = g + wd * p
                    step = s + 1
                    m_new = torch.lerp(m, g, 1 - b1)
                    v_new = v * b2 + (1 - b2) * g * g
                    bc1 = 1 - torch.pow(b1, step)
                    bc2 = 1 - torch.pow(b2, step)
                    p_new = p * (1 - lr * wd) if wd and decoupled else p
                    denom = v_new.sqrt() / bc2.sqrt() + eps
                    p_new = p_new - (lr / bc1) * m_new / denom
                    p.copy_(torch.where(ok, p_new, p))
                    m.copy_(torch.where(ok, m_new, m))
                    v.copy_(torch.where(ok, v_new, v))
                    s.copy_(torch.where(ok, step, s))
            return torch.stack([loss.to(norm.dtype), norm])

        return whole_step

    # -- recording, compiling, verifying -------------------------------------------------------

    def _snapshot(self) -> list[torch.Tensor]:
        tensors = list(self.params)
        if self.mode == "step":
            m, v, s = self._states()
            tensors += [*m, *v, *s]
        return [t.detach().clone() for t in tensors]

    def _restore(self, saved: list[torch.Tensor]) -> None:
        tensors = list(self.params)
        if self.mode == "step":
            m, v, s = self._states()
            tensors += [*m, *v, *s]
        with torch.no_grad():
            for t, v in zip(tensors, saved):
                t.copy_(v)
        for p in self.params:
            p.grad = None

    def prepare(self, batch: tuple, check_batch: tuple, beta: torch.Tensor) -> bool:
        """Record the step on ``batch``, compile it, verify it against eager on ``check_batch``
        (same shapes, other values). Parameters, optimizer and RNG state are left as they were.
        True if the graph is used."""
        if not self.active or self.signature(batch) in self.graphs:
            return self.has_graph(batch)
        if self.mode == "step":
            _init_adam_state(self.opt, self.params)
        started = time.perf_counter()
        rng, saved = get_rng_state(), self._snapshot()
        try:
            from torch.fx.experimental.proxy_tensor import make_fx

            fn = self._traced_fn(len(batch))
            inputs = self._inputs(batch, beta)
            gm = make_fx(fn)(*inputs)
            self.trace_time = time.perf_counter() - started
            self._restore(saved)
            set_rng_state(rng)
            with torch.no_grad(), _cacheable():  # an inference graph: its backward pass is inside it
                compiled = torch._inductor.compile(gm, _detached(self._inputs(batch, beta)),
                                                   options=dict(INDUCTOR_OPTIONS))
            self._restore(saved)
            set_rng_state(rng)
            problem = self._mismatch(compiled, check_batch, beta)
        except Exception as exc:  # recording/compiling can fail in many ways: each means "use eager"
            self._restore(saved)
            set_rng_state(rng)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._fall_back(f"capturing the step failed: {type(exc).__name__}: {first}")
            return False
        finally:
            self.compile_time += time.perf_counter() - started
        self._restore(saved)
        set_rng_state(rng)
        if problem:
            self._fall_back(problem)
            return False
        self.graphs[self.signature(batch)] = compiled
        return True

    def _eager_step(self, batch: tuple, beta: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch, beta)
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params]
        if self.mode == "step":
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
            self.opt.step()
        return loss.detach(), grads

    def _mismatch(self, compiled: Callable, batch: tuple, beta: torch.Tensor) -> str | None:
        """From one RNG/parameter state, does the compiled step do what the eager one does?"""
        rng, saved = get_rng_state(), self._snapshot()
        eager_loss, eager_grads = self._eager_step(batch, beta)
        eager_after = self._snapshot()
        self._restore(saved)
        set_rng_state(rng)
        out = self._run(compiled, batch, beta)
        after = self._snapshot() if self.mode == "step" else [p.grad for p in self.params]
        expected = eager_after if self.mode == "step" else eager_grads
        self.opt.zero_grad(set_to_none=True)
        if not _close(out[0], eager_loss, self.rtol):
            return (f"the compiled loss {float(out[0]):.6g} differs from the eager one "
                    f"{float(eager_loss):.6g}; the model's structure probably depends on the data")
        if not all(_close(a, e, self.rtol) for a, e in zip(after, expected)):
            what = "parameters and optimizer state after the update" if self.mode == "step" else "gradients"
            return f"the compiled step's {what} differ from the eager ones"
        return None

    def _run(self, compiled: Callable, batch: tuple, beta: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = compiled(*_detached(self._inputs(batch, beta)))
        if self.mode == "step":
            return out[0] if isinstance(out, (tuple, list)) else out
        head, *grads = out
        for p, g in zip(self.params, grads):
            p.grad = g
        return head

    def __call__(self, batch: tuple, beta: torch.Tensor) -> torch.Tensor:
        return self._run(self.graphs[self.signature(batch)], batch, beta)

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self.graphs.clear()
        warnings.warn(f"the compiled step is not used ({reason}); training continues on the eager "
                      "path (pass compile=False to skip the attempt)", stacklevel=5)


def _cacheable():
    """A tracing context with a shape environment around ``torch._inductor.compile``.

    PyTorch's FX-graph and AOTAutograd caches key their entries on a shape environment, which
    TorchDynamo provides and a graph recorded by ``make_fx`` lacks: without one both caches are
    bypassed ("No shape env") and every run re-lowers the graph (~12 s for the default VAE's
    step on two cores). With this (static) one, a shape compiled once, in any process, loads
    from the on-disk cache in a fraction of a second.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return torch._guards.tracing(torch._guards.TracingContext(FakeTensorMode(shape_env=ShapeEnv())))


def _detached(inputs: list) -> list:
    """The graph's inputs as tensors that share storage with the parameters but need no grad."""
    return [t.detach() for t in inputs]


def _close(a: torch.Tensor, e: torch.Tensor, rtol: float) -> bool:
    a, e = a.detach().to(torch.float64), e.detach().to(torch.float64)
    floor = 1e-5 * (1 + (float(e.abs().max()) if e.numel() else 0.0))
    return bool(torch.allclose(a, e, rtol=rtol, atol=floor))
