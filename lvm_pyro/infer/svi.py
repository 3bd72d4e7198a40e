"""``fit``: stochastic variational inference for any Pyro model/guide pair.

Each step draws a minibatch, estimates the negative ELBO -E_q[log p(x, z) - log q(z | x)]
(scaled so that it estimates the full-data value) with the chosen gradient estimator,
backpropagates, and takes an optimizer step. Losses are reported per data point.

Runs are reproducible and resumable bit for bit on CPU: every argument is validated before
anything reaches torch; a seed fixes every draw made inside ``fit``; the compiled loss is
chosen by a fixed rule (``lvm_pyro.infer.compiled.graph_pays_off``), not by timing; the
validation pass draws from its own seeded stream, so it never shifts the training noise;
and a checkpoint holds everything a resumed run needs, including the partial sums of an
unfinished epoch.
"""

from __future__ import annotations

import inspect
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from lvm_pyro.checks import check_int
from lvm_pyro.data import resolve_device
from lvm_pyro.errors import (
    CheckpointError,
    ConfigurationError,
    DivergenceError,
    LVMError,
    ModelContractError,
)
from lvm_pyro.infer.batching import make_batches
from lvm_pyro.infer.callbacks import Callback, KLWarmup, KLWarmupWarning, TrainState
from lvm_pyro.infer.checkpoint import (
    RunLock,
    checkpoint_path,
    get_rng_state,
    identity_differences,
    load_checkpoint,
    prepare_directory,
    refuse_overwrite,
    remove_stray_files,
    save_checkpoint,
    set_rng_state,
)
from lvm_pyro.infer.compiled import COMPILABLE, CompiledLoss, graph_pays_off
from lvm_pyro.infer.distributed import join_group
from lvm_pyro.infer.evaluate import dataset_loss
from lvm_pyro.infer.logdensity import broadcasts_over_particles, check_guide, data_frame, sample_sites
from lvm_pyro.infer.objectives import (
    ESTIMATORS,
    SCORE_BASELINES,
    Objective,
    TrainingScale,
    iwae_site_error,
    make_objective,
)
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
from lvm_pyro.models.base import DATA_PLATE, Program, as_program

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
DEFAULT_EPOCHS = 50
JIT_MODES = (True, False, "auto", "inductor")
#: what a resumed run may change (and then uses); any other difference is refused. (``seed``
#: plays no part in a resumed run: its random state comes from the checkpoint.)
RESUMABLE_CHANGES = ("lr", "clip_norm", "epochs", "steps", "callbacks", "checkpoint_every", "val_data",
                     "progress", "device", "jit")


@dataclass
class FitResult:
    """What ``fit`` returns.

    ``losses``: the training objective per data point after each step (a training-batch
    estimate). It is the negative ELBO where the KL weight ``beta`` is 1, and the *annealed*
    objective -(E_q[log p(x | z)] - beta * KL) during a KL warm-up: ``betas`` holds beta for
    each step and ``objective`` names what the curve is. ``epoch_losses``: their mean per
    epoch, with ``epoch_betas`` the mean beta of that epoch's steps. ``val_elbo``: held-out
    ELBO per data point (beta = 1) after each epoch. When a run ends inside an epoch
    (``steps=``, or a callback stopped it), the last entry of ``epoch_losses``,
    ``epoch_betas`` and ``val_elbo`` covers that partial epoch and ``partial_epoch`` is True.
    ``model``: the trained model (as passed in); ``config``: every setting.
    """

    model: object
    program: Program
    losses: list[float]
    epoch_losses: list[float]
    val_elbo: list[float]
    wall_time: float
    config: dict
    steps: int
    epochs: int
    stop_reason: str = ""
    params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    betas: list[float] = field(default_factory=list, repr=False)
    epoch_betas: list[float] = field(default_factory=list)
    partial_epoch: bool = False

    @property
    def elbo(self) -> float:
        """Training objective per data point over the last epoch (or the last step), negated:
        the ELBO once the KL warm-up is over (see ``objective``)."""
        last = self.epoch_losses[-1] if self.epoch_losses else self.losses[-1]
        return -last

    @property
    def objective(self) -> str:
        """What ``losses`` and ``epoch_losses`` are: "-ELBO", or "annealed -ELBO (beta < 1 ...)"
        when some steps ran with a KL weight below 1."""
        if all(b == 1.0 for b in self.betas):
            return "-ELBO"
        annealed = sum(b < 1.0 for b in self.betas)
        return (f"annealed -ELBO (KL weight beta < 1 for {annealed} of {len(self.betas)} steps: "
                "see betas)")


FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def _fusable(params: list[torch.Tensor]) -> bool:
    """Fused Adam (one kernel for every tensor) needs floating tensors on one CPU/CUDA device."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() for p in params)
    )


def _check_optimizer(optimizer) -> None:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ConfigurationError(
                f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}, a torch.optim "
                "class, or a callable params -> optimizer"
            )
    elif isinstance(optimizer, type):
        if not issubclass(optimizer, torch.optim.Optimizer):
            raise ConfigurationError(
                f"optimizer={optimizer.__name__} is not a torch.optim.Optimizer subclass: pass a name "
                f"({', '.join(OPTIMIZERS)}), a torch.optim class such as torch.optim.Adam, or a "
                "callable params -> optimizer"
            )
        _check_steps_without_closure(optimizer)
    elif not callable(optimizer):
        raise ConfigurationError(
            f"optimizer must be a name ({', '.join(OPTIMIZERS)}), a torch.optim class or a callable "
            f"params -> optimizer, got {optimizer!r}"
        )
    else:
        try:
            inspect.signature(optimizer).bind([])
        except TypeError:
            raise ConfigurationError(
                "the optimizer factory must take one argument, the list of parameters, and return an "
                "optimizer: e.g. optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9)"
            ) from None
        except ValueError:  # no signature to inspect (a builtin): let the call tell
            pass


def _check_steps_without_closure(cls: type) -> None:
    """fit calls ``opt.step()``: an optimizer whose step needs a closure (LBFGS) cannot be used."""
    closure = inspect.signature(cls.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigurationError(
            f"optimizer {cls.__name__} needs a closure at every step (it re-evaluates the loss), which "
            "stochastic minibatch training does not provide: use 'adam', 'adamw', 'sgd', 'rmsprop' or "
            "'adagrad'"
        )


def _make_optimizer(optimizer, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        cls = OPTIMIZERS[optimizer]
        if cls in FUSABLE and _fusable(params):
            return cls(params, lr=lr, fused=True)
        return cls(params, lr=lr)
    if isinstance(optimizer, type):
        return optimizer(params, lr=lr)
    opt = optimizer(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigurationError(
            f"the optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer: "
            "return one built on the parameters it is given, e.g. lambda ps: torch.optim.SGD(ps, lr=0.01)"
        )
    _check_steps_without_closure(type(opt))
    return opt


def _is_real(value) -> bool:
    """A real number (Python or numpy scalar), not a bool."""
    real = isinstance(value, (int, float, np.integer, np.floating))
    return real and not isinstance(value, (bool, np.bool_))


def _check_number(value, name: str, *, minimum: float, strict: bool, allow_none: bool, fix: str) -> None:
    if value is None and allow_none:
        return
    ok = _is_real(value) and math.isfinite(float(value)) and (
        float(value) > minimum if strict else float(value) >= minimum)
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigurationError(f"{name}={value!r}: pass a finite number {bound}{fix}")


def _check_args(*, estimator, num_particles, batch_size, epochs, steps, optimizer, lr, clip_norm, seed,
                callbacks, progress, checkpoint_dir, checkpoint_every, resume, kl_warmup, score_baseline,
                vectorize_particles, data_plate, jit, distributed) -> list[Callback]:
    """Every argument of ``fit`` that is not data or model, checked before anything reaches torch."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ConfigurationError(
            f"unknown estimator {estimator!r}; valid estimators: {', '.join(ESTIMATORS)}"
        )
    for value, label in ((num_particles, "num_particles"), (batch_size, "batch_size"), (epochs, "epochs"),
                         (steps, "steps")):
        if value is not None:
            check_int(value, label, 1)
    check_int(checkpoint_every, "checkpoint_every", 1)
    if epochs is not None and steps is not None:
        raise ConfigurationError("pass epochs or steps, not both")
    _check_optimizer(optimizer)
    _check_number(lr, "lr", minimum=0.0, strict=True, allow_none=False,
                  fix=" (a learning rate such as lr=1e-3)")
    _check_number(clip_norm, "clip_norm", minimum=0.0, strict=True, allow_none=True,
                  fix=", the largest gradient norm allowed (e.g. clip_norm=10.0), or None for no clipping")
    if seed is not None:
        check_int(seed, "seed", 0)
        if seed >= 2**32:
            raise ConfigurationError(f"seed={seed!r}: pass an integer in [0, 2**32 - 1], or None")
    if not (isinstance(kl_warmup, str) and kl_warmup == "auto"):
        _check_number(kl_warmup, "kl_warmup", minimum=0.0, strict=False, allow_none=False,
                      fix=' (epochs of KL warm-up; 0 for none), or "auto" for the model\'s default')
    if not isinstance(score_baseline, str) or score_baseline not in SCORE_BASELINES:
        raise ConfigurationError(
            f"unknown score_baseline {score_baseline!r}; valid: {', '.join(SCORE_BASELINES)}"
        )
    if vectorize_particles is not None and not isinstance(vectorize_particles, bool):
        raise ConfigurationError(f"vectorize_particles={vectorize_particles!r}: pass True, False or None")
    if not isinstance(data_plate, str) or not data_plate:
        raise ConfigurationError(
            f"data_plate={data_plate!r}: pass the name of the model's pyro.plate over the data points, "
            f"as a string (default {DATA_PLATE!r})"
        )
    if not (isinstance(jit, bool) or (isinstance(jit, str) and jit in JIT_MODES)):
        raise ConfigurationError(
            f"jit={jit!r}: pass 'auto' (a compiled graph where it pays off), True (always), False "
            "(never) or 'inductor' (the graph compiled by torch.compile)"
        )
    for value, label in ((progress, "progress"), (resume, "resume"), (distributed, "distributed")):
        if not isinstance(value, bool):
            raise ConfigurationError(f"{label}={value!r}: pass True or False")
    if checkpoint_dir is not None and (
        not isinstance(checkpoint_dir, (str, os.PathLike)) or str(checkpoint_dir) == ""
    ):
        raise ConfigurationError(
            f"checkpoint_dir={checkpoint_dir!r}: pass a folder path (str or pathlib.Path)"
        )
    if resume and checkpoint_dir is None:
        raise ConfigurationError("resume=True needs checkpoint_dir, the folder of the run to resume")
    if isinstance(callbacks, Callback):
        raise ConfigurationError("callbacks takes a list: pass callbacks=[...] around the callback")
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, (Sequence, set, frozenset)):
        raise ConfigurationError(
            f"callbacks={callbacks!r}: pass a list of lvm_pyro.infer.callbacks.Callback objects"
        )
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            hint = " (pass an instance: KLWarmup(10), not the class)" if isinstance(cb, type) else ""
            raise ConfigurationError(
                f"callbacks[{i}] is {cb!r}, not a Callback: subclass lvm_pyro.infer.callbacks.Callback "
                f"and override its hooks{hint}"
            )
    return callbacks


def _warmup_callbacks(callbacks: list[Callback], kl_warmup, program: Program, estimator: str) -> float:
    """Settle the KL warm-up (in place on ``callbacks``); return its length in epochs.

    One source of truth: a ``KLWarmup`` callback, or else ``kl_warmup`` (epochs; "auto": the
    model's ``default_kl_warmup``) turned into one. Both at once must agree.
    """
    given = [cb for cb in callbacks if isinstance(cb, KLWarmup)]
    if len(given) > 1:
        raise ConfigurationError("pass at most one KLWarmup callback (each sets the KL weight beta)")
    if given:
        cb = given[0]
        if kl_warmup != "auto" and float(kl_warmup) != float(cb.epochs):
            raise ConfigurationError(
                f"kl_warmup={kl_warmup!r} and the callback KLWarmup(epochs={cb.epochs!r}) disagree: pass "
                "one of them (the KLWarmup callback also takes start=)"
            )
        if estimator in ("iwae", "enum"):
            raise ConfigurationError(
                f"a KLWarmup callback cannot be used with estimator {estimator!r} (its bound has no "
                "separate KL term): drop the callback, or use estimator='reparam' or 'meanfield'"
            )
        return float(cb.epochs)
    warmup = program.kl_warmup if kl_warmup == "auto" else float(kl_warmup)
    if warmup > 0 and estimator in ("iwae", "enum"):
        if kl_warmup != "auto":
            warnings.warn(f"kl_warmup is not applied with estimator {estimator!r} (its bound has no "
                          "separate KL term)", stacklevel=3)
        return 0.0
    if warmup > 0:
        callbacks.insert(0, KLWarmup(warmup))
    return warmup


def _callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    """Each callback's checkpoint key; repeats of one key get "#2", "#3" in list order."""
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        key = cb.state_key
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def _setup_trace(program: Program, scale: TrainingScale, batch: tuple, estimator: str):
    """Run guide then model once (validation on); check the contract; collect parameters."""
    try:
        with pyro.validation_enabled(True), poutine.trace() as guide_tape:
            scale(program.guide)(*batch)
        guide_trace = guide_tape.trace
        with pyro.validation_enabled(True), poutine.trace() as model_tape:
            poutine.replay(scale(program.model), trace=guide_trace)(*batch)
        model_trace = model_tape.trace
    except LVMError:
        raise
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError, NotImplementedError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelContractError(
            f"the guide and model fail when run once on the first batch (x of shape "
            f"{tuple(batch[0].shape)}): {type(exc).__name__}: {first_line}. Check that the model "
            "and guide accept this data (shape, dtype, number of conditions) and that their "
            "distributions get valid (finite, in-support) parameters; the cause is chained below"
        ) from exc
    check_guide(model_trace, guide_trace)
    if estimator == "iwae":  # refused here, before a vectorized run a global site may not survive
        outside = [s["name"] for s in sample_sites(guide_trace) if data_frame(s, scale.plate) is None]
        if outside:
            raise iwae_site_error(outside[0], scale.plate)
    enumerated = [
        n for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and s["infer"].get("enumerate") and not s["is_observed"]
    ]
    if estimator == "meanfield":
        discrete = [
            n for n, s in guide_trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
            and not s["fn"].has_rsample
        ]
        if discrete:
            raise ConfigurationError(
                f"estimator 'meanfield' needs reparameterizable guide sites, but {discrete} cannot be "
                "reparameterized (discrete?): use estimator='score' or 'iwae' (or 'reparam', which "
                "adds score-function terms for them)"
            )
    if enumerated and estimator != "enum":
        raise ConfigurationError(
            f"the model marks {enumerated} for enumeration: use estimator='enum' (or em) to "
            "sum them out"
        )
    if not any(s["type"] == "sample" and s["is_observed"] for s in model_trace.nodes.values()):
        raise ModelContractError(
            "the model observes nothing: pass the data to a sample site with obs=x"
        )
    params: dict[str, torch.Tensor] = {}
    for tr in (guide_trace, model_trace):
        for name, site in tr.nodes.items():
            if site["type"] == "param":
                value = site["value"]
                params.setdefault(name, value.unconstrained() if hasattr(value, "unconstrained") else value)
    return params


def _pyro_name_to_torch(name: str) -> str:
    """'enc$$$0.weight' (a pyro.module parameter) -> 'enc.0.weight' (its module path)."""
    return name.replace("$$$", ".")


def _module_param_names(module: torch.nn.Module) -> set[str]:
    names = set()
    for name, _ in module.named_parameters():
        names.add(name)
        names.add(name.removesuffix("_unconstrained"))  # a PyroParam's Pyro name
    return names


def _collect_params(program: Program, objective: Objective, traced: dict[str, torch.Tensor]):
    """Every trained tensor, once, by a stable name (module parameters first)."""
    named: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    own = _module_param_names(program.module) if program.module is not None else set()
    modules = [("module", program.module)] if program.module is not None else []
    modules += [(f"baseline{i}", m) for i, m in enumerate(objective.extra_modules)]
    for prefix, module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                named[f"{prefix}.{name}"] = p
    for name in sorted(traced):
        p = traced[name]
        if id(p) not in seen and _pyro_name_to_torch(name) not in own:
            seen.add(id(p))
            named[f"param.{name}"] = p
    if not named:
        raise ModelContractError(
            "the model and guide have no trainable parameters: declare them with pyro.param, "
            "pyro.module, or as parameters of a PyroModule"
        )
    return named


def _loss_and_finite(loss: torch.Tensor | float, params: Sequence[torch.Tensor]) -> tuple[float, bool]:
    """The loss as a float and whether it and every gradient are finite, in one device sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not torch.is_tensor(loss):
        if not grads:
            return loss, math.isfinite(loss)
        total = float(torch.stack(torch._foreach_norm(grads)).sum())
        return loss, math.isfinite(loss) and math.isfinite(total)
    if not grads:
        value = loss.detach().item()
        return value, math.isfinite(value)
    value, total = torch.stack((loss.detach(), torch.stack(torch._foreach_norm(grads)).sum())).tolist()
    return value, math.isfinite(value) and math.isfinite(total)



@restoring_param_store()
def fit(
    model,
    data,
    *,
    guide: Callable | None = None,
    estimator: str = "reparam",
    num_particles: int | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    optimizer="adam",
    lr: float = 1e-3,
    clip_norm: float | None = None,
    val_data=None,
    device: str | torch.device | None = "auto",
    seed: int | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    kl_warmup: float | str = "auto",
    score_baseline: str = "decaying",
    vectorize_particles: bool | None = None,
    data_plate: str = DATA_PLATE,
    jit: bool | str = "auto",
    distributed: bool = False,
) -> FitResult:
    """Train a model/guide pair by SVI: maximize ELBO(x) = E_q[log p(x, z) - log q(z | x)].

    Args:
        model: a ``LatentVariableModel``, any object with ``model``/``guide`` methods, a
            ``(model, guide)`` pair of callables, or a model callable with ``guide=``.
        data: x (tensor, array, nested list), a tuple (x, cond, ...) of per-example
            tensors passed to the model as ``model(x, *cond)``, or a torch DataLoader.
        estimator: "reparam", "meanfield", "score", "iwae" or "enum" (see
            ``lvm_pyro.infer.objectives``).
        num_particles: samples of z per data point and step; None: the estimator's default
            (K=5 for "iwae", 1 otherwise; see ``make_objective``).
        batch_size: minibatch size (default min(N, 128)); sites in the plate named
            ``data_plate`` are scaled by N / batch size.
        epochs / steps: how long to train (one of them; default 50 epochs).
        optimizer, lr, clip_norm: a torch optimizer name/class/factory, its learning rate (a
            positive number), and optional gradient-norm clipping (a positive number). "adam"
            and "adamw" use torch's fused implementation where the parameters allow it.
        val_data: held-out data; its ELBO per data point is recorded after every epoch. The
            validation pass draws its noise from its own seeded stream: it never changes the
            training trajectory.
        device: "auto" (CUDA when available), "cpu", "cuda", ...; data and model move there;
            the model also takes the data's floating dtype.
        seed: seeds Pyro, torch, numpy and the batch order. Two calls with one seed from the
            same initial model state give bit-identical parameters and losses on CPU. The
            model's own random initialization happens when it is built, before ``fit``: seed
            that too (``torch.manual_seed(0); model = VAE()``) to reproduce a run from scratch.
        callbacks: ``lvm_pyro.infer.callbacks`` objects (early stopping, convergence, LR
            schedule, KL warm-up); their checkpointed states are paired by ``state_key``.
        progress: show a tqdm bar with the loss.
        checkpoint_dir, checkpoint_every, resume: write an atomic checkpoint every
            ``checkpoint_every`` epochs and at the end (also when ``steps=`` or a callback ends
            the run inside an epoch); ``resume=True`` continues from it, exactly: the resumed
            run equals an uninterrupted one bit for bit on CPU (with a DataLoader, only if its
            sampler is seeded). A resumed run may change lr, clip_norm, epochs/steps,
            callbacks (paired with their saved states by ``Callback.state_key``, in any
            order), checkpoint_every, val_data, device and jit, and uses the new values (its
            random state comes from the checkpoint, whatever ``seed``); any other difference
            (model, parameter shapes, optimizer type, data shape, estimator, num_particles,
            data_plate, kl_warmup) is refused with a ``CheckpointError`` listing them. Without
            ``resume=True`` a directory that already holds a checkpoint is refused (pass a new
            one). The directory is locked while ``fit`` runs: a second writer is refused.
        kl_warmup: epochs of linear KL annealing (a number >= 0); "auto" uses the model's
            default. A ``KLWarmup`` callback may be passed instead; both must then agree. A
            run that ends inside its warm-up warns (``KLWarmupWarning``): its losses are the
            annealed objective (see ``FitResult.betas``).
        score_baseline: "decaying", "neural" or "none" (estimator "score" only).
        jit: for "reparam", "meanfield" and "iwae", record the loss once per batch shape as
            one torch graph (``lvm_pyro.infer.compiled``), verified against the eager loss and
            gradients before use, with a fallback to eager. "auto" (default) uses the graph
            when ``graph_pays_off`` (parameter elements x batch size <= 2^27: small models,
            where Python's per-step overhead dominates), True always, False never. The rule
            is fixed, so reruns and resumptions are bit-identical on either path; the two
            paths agree to rounding (about 1e-7 relative). ``jit="inductor"`` also compiles
            that graph with ``torch.compile`` (seconds to a minute of compiling first).
        distributed: data-parallel training in a torch.distributed group (launch with
            ``torchrun --nproc_per_node=P``): ``batch_size`` is the global batch, split over
            the processes, gradients summed (``lvm_pyro.infer.distributed``); rank 0 shows
            progress and writes checkpoints.

    Raises ConfigurationError for a bad argument (before anything runs), CheckpointError for
    a checkpoint directory that cannot be used, and DivergenceError (with ``.result`` holding
    the history so far) when a loss or gradient is not finite; the parameters are then those
    of the last finite step and the last checkpoint is untouched.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def guide(x):
        ...     loc = pyro.param("loc", torch.tensor(0.0))
        ...     pyro.sample("mu", dist.Normal(loc, 0.1))
        >>> result = fit(model, torch.randn(100) + 3, guide=guide, steps=500, lr=0.05,
        ...              batch_size=100, progress=False, seed=0)
        >>> abs(float(pyro.param("loc").detach()) - 3) < 0.5
        True
    """
    started = time.perf_counter()
    callbacks = _check_args(
        estimator=estimator, num_particles=num_particles, batch_size=batch_size, epochs=epochs, steps=steps,
        optimizer=optimizer, lr=lr, clip_norm=clip_norm, seed=seed, callbacks=callbacks, progress=progress,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume, kl_warmup=kl_warmup,
        score_baseline=score_baseline, vectorize_particles=vectorize_particles, data_plate=data_plate,
        jit=jit, distributed=distributed,
    )
    # plain Python numbers from here on (numpy scalars are accepted; configs are JSON-ready)
    lr = float(lr)
    clip_norm = None if clip_norm is None else float(clip_norm)
    seed = None if seed is None else int(seed)
    kl_warmup = kl_warmup if kl_warmup == "auto" else float(kl_warmup)
    program = as_program(model, guide)
    dev = resolve_device(device)
    group, dev = join_group(dev, distributed)
    main_process = group is None or group.is_main
    lock = None
    ckpt_dir = None
    if checkpoint_dir is not None:  # rank 0 writes; every rank reads when resuming
        if main_process:
            ckpt_dir = prepare_directory(checkpoint_dir)
            lock = RunLock(ckpt_dir).acquire()
        else:
            ckpt_dir = Path(checkpoint_dir)
    try:
        if lock is not None:
            remove_stray_files(ckpt_dir)
            if not resume:
                refuse_overwrite(ckpt_dir)
        return _fit(model, program, data, dev, group, main_process, ckpt_dir, callbacks, started,
                    estimator=estimator, num_particles=num_particles, batch_size=batch_size, epochs=epochs,
                    steps=steps, optimizer=optimizer, lr=lr, clip_norm=clip_norm, val_data=val_data,
                    seed=seed, progress=progress, checkpoint_every=checkpoint_every, resume=resume,
                    kl_warmup=kl_warmup, score_baseline=score_baseline,
                    vectorize_particles=vectorize_particles, data_plate=data_plate, jit=jit)
    finally:
        if lock is not None:
            lock.release()


def _fit(model, program: Program, data, dev, group, main_process: bool, ckpt_dir: Path | None,
         callbacks: list[Callback], started: float, *, estimator, num_particles, batch_size, epochs, steps,
         optimizer, lr, clip_norm, val_data, seed, progress, checkpoint_every, resume, kl_warmup,
         score_baseline, vectorize_particles, data_plate, jit) -> FitResult:
    if seed is not None:
        pyro.set_rng_seed(seed)
    shuffle_seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
    ckpt = load_checkpoint(checkpoint_path(ckpt_dir), complete=True) if resume else None
    if ckpt is not None:  # the batch order (and validation noise) of the run being resumed
        shuffle_seed = ckpt["config"]["shuffle_seed"]
    if group is not None:
        # one batch order for every rank; each rank its own noise
        shuffle_seed = group.broadcast_int(shuffle_seed, dev)
        pyro.set_rng_seed(shuffle_seed % 2**32 + group.rank)

    batches = make_batches(data, program, dev, batch_size=batch_size, seed=shuffle_seed)
    val_batches = (
        make_batches(val_data, program, dev, batch_size=None, shuffle=False, name="val_data",
                     max_batch_size=batches.batch_size)
        if val_data is not None else None
    )
    first_batches = iter(batches.epoch())
    first = next(first_batches)
    check = next(first_batches, first)  # another batch of the same shape, to verify a compiled graph on
    batches.rewind_epoch(batches.epoch_start_state)
    if group is not None:
        if batches.batch_size < group.world_size:
            raise ConfigurationError(
                f"batch_size={batches.batch_size} is smaller than the {group.world_size} processes: "
                "pass a global batch_size of at least one example per process"
            )
        first, check = group.shard(first), group.shard(check)
    x0 = first[0]
    if program.module is not None:
        program.module.to(device=dev, dtype=x0.dtype if x0.is_floating_point() else None)

    if vectorize_particles is None and (num_particles or 1) > 1 and estimator != "iwae":
        # particles in one vectorized pass where the model broadcasts over them, else in sequence
        vectorize_particles = broadcasts_over_particles(program, first, program.max_plate_nesting)
    objective = make_objective(
        estimator,
        num_particles=num_particles,
        max_plate_nesting=program.max_plate_nesting,
        vectorize_particles=vectorize_particles,
        score_baseline=score_baseline,
        baseline_features=int(x0[0].numel()),
    )
    for extra in objective.extra_modules:
        extra.to(device=dev, dtype=x0.dtype)
    warmup = _warmup_callbacks(callbacks, kl_warmup, program, estimator)
    warmup_cb = next((cb for cb in callbacks if isinstance(cb, KLWarmup)), None)
    keys = _callback_keys(callbacks)

    scale = TrainingScale(batches.num_data, plate=data_plate)
    if group is not None:
        # a shard of s of a global batch of B: data sites count N / B each, global sites 1 / P
        scale.num_data = batches.num_data * x0.shape[0] / batches.batch_size
        scale.global_scale = 1.0 / group.world_size
    claim_module_params(program.module)
    traced = _setup_trace(program, scale, first, estimator)
    if batches.batch_size < batches.num_data and not scale.saw_plate:
        raise ModelContractError(
            f"minibatches of {batches.batch_size} of {batches.num_data} points need the "
            f"observations inside pyro.plate({data_plate!r}, len(x)) so they can be scaled, and "
            f"the model has no plate named {data_plate!r}: name the model's plate over data points "
            f"with data_plate=..., add that plate to the model and guide, or pass "
            f"batch_size={batches.num_data}"
        )
    params = _collect_params(program, objective, traced)
    param_list = list(params.values())
    if group is not None:
        group.broadcast_(param_list)
    opt = _make_optimizer(optimizer, param_list, lr)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * steps_per_epoch
    identity = {
        "estimator": estimator,
        "num_particles": objective.elbo.num_particles,
        "batch_size": batches.batch_size,
        "num_data": batches.num_data,
        "data": [[list(t.shape[1:]), str(t.dtype)] for t in first],
        "optimizer": f"{type(opt).__module__}.{type(opt).__qualname__}",
        "data_plate": data_plate,
        "kl_warmup": warmup,
        "kl_warmup_start": warmup_cb.start if warmup_cb is not None else 0.0,
        "score_baseline": score_baseline if estimator == "score" else None,
        "model": type(program.source).__name__ if program.source is not None else "callable",
        "world_size": group.world_size if group is not None else 1,
        "parameters": _shapes(program, params),
    }
    config = {
        "estimator": estimator,
        "num_particles": objective.elbo.num_particles,
        "batch_size": batches.batch_size,
        "num_data": batches.num_data,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom"),
        "lr": lr,
        "clip_norm": clip_norm,
        "seed": seed,
        "shuffle_seed": shuffle_seed,
        "device": str(dev),
        "dtype": str(x0.dtype),
        "kl_warmup": warmup,
        "score_baseline": score_baseline if estimator == "score" else None,
        "data_plate": data_plate,
        "model": identity["model"],
        "world_size": identity["world_size"],
        "jit": jit,
        "callbacks": keys,
    }
    state = TrainState(
        num_data=batches.num_data,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        optimizer=opt,
        params=params,
    )
    partial = {"sum": 0.0, "count": 0, "beta_sum": 0.0}
    if ckpt is not None:
        _restore(ckpt, ckpt_dir, identity, config, program, params, opt, batches, state, partial,
                 callbacks, keys, dev)

    model_fn, guide_fn = scale(program.model), scale(program.guide)
    compiled = None
    use_graph = jit is True or jit == "inductor" or (
        jit == "auto" and graph_pays_off(param_list, batches.batch_size))
    if use_graph and estimator in COMPILABLE:
        annealing = warmup_cb is not None
        beta_input = x0.new_tensor(1.0)

        def loss_fn(*args):
            scale.beta = args[-1] if annealing else 1.0
            return objective.differentiable_loss(model_fn, guide_fn, *args[:-1])

        compiled = CompiledLoss(loss_fn, param_list, backend="inductor" if jit == "inductor" else "script")
        with pyro.validation_enabled(False):
            compiled.prepare(first, check, beta_input)
    config["compiled"] = compiled is not None and compiled.active and bool(compiled.graphs)

    val_seed = (shuffle_seed + 1) % 2**63

    def validate() -> float:
        """Held-out ELBO from a fixed noise stream; the training RNG state is left as it was."""
        rng = get_rng_state()
        try:
            torch.manual_seed(val_seed)
            return -dataset_loss(program, objective, val_batches, plate=data_plate)
        finally:
            set_rng_state(rng)

    saved_at = {"step": state.step if ckpt is not None else -1}

    def write_checkpoint() -> None:
        if ckpt_dir is None or not main_process:
            return
        store = pyro.get_param_store()
        traced_ids = {id(p) for p in param_list}
        extra_store = {
            n: store[n].detach() for n in store.keys() if id(store._params[n]) not in traced_ids
        }
        save_checkpoint(
            checkpoint_path(ckpt_dir),
            {
                "module": program.module.state_dict() if program.module is not None else {},
                "params": {k: v.detach() for k, v in params.items()},
                "param_store": extra_store,
                "optimizer": opt.state_dict(),
                "rng": get_rng_state(),
                "shuffle_state": batches.shuffle_state(state.step % steps_per_epoch == 0),
                "counters": {"step": state.step, "epoch": state.epoch},
                "history": {
                    "losses": state.losses,
                    "epoch_losses": state.epoch_losses,
                    "val_elbo": state.val_elbo,
                    "betas": state.betas,
                    "epoch_betas": state.epoch_betas,
                    "partial": dict(partial),
                },
                "callbacks": {key: cb.state_dict() for key, cb in zip(keys, callbacks)},
                "config": config,
                "identity": identity,
            },
        )
        saved_at["step"] = state.step

    for cb in callbacks:
        cb.on_fit_start(state)
    bar = tqdm(total=total_steps, initial=state.step, desc=f"fit[{estimator}]", unit="step",
               disable=not (progress and main_process), dynamic_ncols=True)
    try:
        with pyro.validation_enabled(False):
            while state.step < total_steps and not state.stop:
                skip = state.step - state.epoch * steps_per_epoch
                if skip == 0:
                    partial.update(sum=0.0, count=0, beta_sum=0.0)
                for batch in batches.epoch(skip=skip):
                    if group is not None:
                        batch = group.shard(batch)
                    for cb in callbacks:
                        cb.on_step_start(state)
                    opt.zero_grad(set_to_none=True)
                    if compiled is not None:
                        beta_input.fill_(state.beta)
                        loss = compiled(batch, beta_input)
                        loss.backward()
                    else:
                        scale.beta = state.beta
                        loss = objective.loss_and_grads(model_fn, guide_fn, *batch)
                    if group is not None:
                        loss = group.all_reduce_step(torch.as_tensor(loss, device=dev), param_list)
                    loss, finite = _loss_and_finite(loss, param_list)
                    if not finite:
                        err = DivergenceError(
                            f"non-finite loss or gradient at step {state.step + 1} (epoch "
                            f"{state.epoch + 1}, loss {loss}); the parameters are those after step "
                            f"{state.step}. Lower the learning rate (lr={config['lr']}), clip gradients "
                            "(clip_norm=10.0), or check the data and model scales; with a "
                            "checkpoint_dir, resume=True with a lower lr continues from the last checkpoint"
                        )
                        err.result = _result(model, program, state, config, started, params)
                        raise err
                    if clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(param_list, clip_norm)
                    opt.step()
                    per_point = loss / batches.num_data
                    state.losses.append(per_point)
                    state.betas.append(float(state.beta))
                    partial["sum"] += per_point
                    partial["count"] += 1
                    partial["beta_sum"] += float(state.beta)
                    state.step += 1
                    bar.update(1)
                    for cb in callbacks:
                        cb.on_step_end(state)
                    if state.step >= total_steps or state.stop:
                        break
                if state.step == (state.epoch + 1) * steps_per_epoch:  # a whole epoch is done
                    state.epoch_losses.append(partial["sum"] / partial["count"])
                    state.epoch_betas.append(partial["beta_sum"] / partial["count"])
                    state.epoch += 1
                    if val_batches is not None:
                        state.val_elbo.append(validate())
                    postfix = {"loss": f"{state.epoch_losses[-1]:.4g}"}
                    if state.val_elbo:
                        postfix["val_elbo"] = f"{state.val_elbo[-1]:.4g}"
                    bar.set_postfix(postfix, refresh=False)
                    for cb in callbacks:
                        cb.on_epoch_end(state)
                    partial.update(sum=0.0, count=0, beta_sum=0.0)
                    if state.epoch % checkpoint_every == 0 or state.step >= total_steps or state.stop:
                        write_checkpoint()
            if saved_at["step"] != state.step:  # the run ended inside an epoch: its final checkpoint
                write_checkpoint()
    finally:
        bar.close()
    last_beta = state.betas[-1] if state.betas else 1.0
    # the final, partial epoch (if any): in the result, not in the checkpoint's history, and
    # validated on the parameters training ended with (before callbacks restore others)
    partial_val = validate() if partial["count"] and val_batches is not None else None
    for cb in callbacks:
        cb.on_fit_end(state)
    if not state.stop_reason:
        state.stop_reason = "completed"
    config["compiled"] = compiled is not None and compiled.active and bool(compiled.graphs)
    if compiled is not None and not compiled.active:
        config["compile_fallback"] = compiled.fallback_reason
    result = _result(model, program, state, config, started, params)
    if partial["count"]:
        result.epoch_losses.append(partial["sum"] / partial["count"])
        result.epoch_betas.append(partial["beta_sum"] / partial["count"])
        if partial_val is not None:
            result.val_elbo.append(partial_val)
        result.partial_epoch = True
    done = state.progress
    if warmup_cb is not None and last_beta < 1.0 and done < warmup_cb.epochs:
        warnings.warn(
            f"the run ended {done:.3g} epochs into a {warmup_cb.epochs:g}-epoch KL warm-up (KL weight "
            f"beta={last_beta:.3g} at the last step): its losses are the annealed objective "
            "-(E_q[log p(x | z)] - beta * KL), not the -ELBO (see FitResult.betas). Train "
            f"{warmup_cb.epochs - done:.3g} more epochs (resume=True with more epochs), or pass a "
            "shorter kl_warmup= (kl_warmup=0 turns the warm-up off)",
            KLWarmupWarning, stacklevel=3,
        )
    return result


def _shapes(program: Program, params: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Every saved tensor's shape by name: trained parameters and the module's buffers."""
    shapes = {name: list(p.shape) for name, p in params.items()}
    if program.module is not None:
        for name, value in program.module.state_dict().items():
            shapes.setdefault(f"module.{name}", list(value.shape))
    return shapes


def _restore(ckpt: dict, ckpt_dir: Path, identity: dict, config: dict, program: Program, params, opt,
             batches, state: TrainState, partial: dict, callbacks, keys, dev) -> None:
    """Continue the run of ``ckpt``: refuse what may not change, then load every state."""
    differences = identity_differences(ckpt["identity"], identity)
    if differences:
        raise CheckpointError(
            f"cannot resume the run in {str(ckpt_dir)!r}: this call differs from it in what a "
            "resumed run may not change:\n  - " + "\n  - ".join(differences) + "\nResume with the "
            "model, data and settings that wrote the checkpoint (a resumed run may change "
            f"{', '.join(RESUMABLE_CHANGES)}), or start a new run in a new checkpoint_dir"
        )
    old = ckpt["config"]
    if program.module is not None and ckpt["module"]:
        program.module.load_state_dict(ckpt["module"])
    with torch.no_grad():
        for k, v in ckpt["params"].items():
            params[k].copy_(v)
    for k, v in ckpt["param_store"].items():
        pyro.get_param_store()[k] = v.to(dev)
    opt.load_state_dict(ckpt["optimizer"])
    changed = {k: [old.get(k), config[k]] for k in ("lr", "clip_norm") if old.get(k) != config[k]}
    if "lr" in changed:  # the new learning rate replaces the (possibly scheduled) one of the run
        for group in opt.param_groups:
            group["lr"] = config["lr"]
            if "initial_lr" in group:
                group["initial_lr"] = config["lr"]
    set_rng_state(ckpt["rng"])
    batches.rewind_epoch(ckpt["shuffle_state"])
    state.step, state.epoch = ckpt["counters"]["step"], ckpt["counters"]["epoch"]
    history = ckpt["history"]
    state.losses = list(history["losses"])
    state.epoch_losses = list(history["epoch_losses"])
    state.val_elbo = list(history["val_elbo"])
    state.betas = list(history["betas"])
    state.epoch_betas = list(history["epoch_betas"])
    partial.update(history["partial"])
    saved = ckpt["callbacks"]
    for key, cb in zip(keys, callbacks):
        if key in saved:
            cb.load_state_dict(saved[key])
    config["resumed_from_step"] = state.step
    if changed:
        config["resume_changed"] = changed


def _result(model, program: Program, state: TrainState, config: dict, started: float, params) -> FitResult:
    return FitResult(
        model=model,
        program=program,
        losses=list(state.losses),
        epoch_losses=list(state.epoch_losses),
        val_elbo=list(state.val_elbo),
        wall_time=time.perf_counter() - started,
        config=config,
        steps=state.step,
        epochs=state.epoch,
        stop_reason=state.stop_reason,
        params=params,
        betas=list(state.betas),
        epoch_betas=list(state.epoch_betas),
    )
