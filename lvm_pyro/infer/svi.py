"""``fit``: stochastic variational inference for any Pyro model/guide pair.

Each step draws a minibatch, estimates the negative ELBO -E_q[log p(x, z) - log q(z | x)]
(scaled so that it estimates the full-data value) with the chosen objective, backpropagates,
and takes an optimizer step (``lvm_pyro.infer.trainer.Trainer`` owns that loop). Losses are
reported per data point.

Runs are reproducible and resumable bit for bit on CPU: every argument is validated before
anything reaches torch; a seed fixes every draw made inside ``fit``; the compiled step is
chosen by a fixed rule (``lvm_pyro.infer.compile.choose``), never by timing, and a resumed
run keeps the path its checkpoint records; the validation pass draws from its own seeded
stream, so it never shifts the training noise; and a checkpoint holds everything a resumed
run needs, including the partial sums of an unfinished epoch.
"""

from __future__ import annotations

import inspect
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyro
import torch

from lvm_pyro.checks import check_int
from lvm_pyro.data import resolve_device
from lvm_pyro.errors import ConfigurationError, ModelContractError
from lvm_pyro.infer.batching import make_batches
from lvm_pyro.infer.callbacks import Callback, KLWarmup
from lvm_pyro.infer.checkpoint import (
    RunLock,
    checkpoint_path,
    load_checkpoint,
    prepare_directory,
    refuse_overwrite,
    remove_stray_files,
)
from lvm_pyro.infer.compile import Compilation, CompiledStep, choose
from lvm_pyro.infer.distributed import join_group
from lvm_pyro.infer.logdensity import broadcasts_over_particles
from lvm_pyro.infer.objectives import OBJECTIVES, SCORE_BASELINES, TrainingScale, make_objective
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
from lvm_pyro.infer.trainer import (
    OPTIMIZERS,
    Checkpointing,
    Distribution,
    FitResult,
    Trainer,
    check_program,
    check_steps_without_closure,
    collect_params,
    make_optimizer,
    shapes,
)
from lvm_pyro.models.base import DATA_PLATE, Program, as_program

__all__ = ["fit", "FitResult", "Checkpointing", "Compilation", "Distribution", "OPTIMIZERS"]

DEFAULT_EPOCHS = 50
#: fit's former keyword names -> the current ones (accepted with a FutureWarning)
LEGACY_NAMES = {"estimator": "objective", "checkpoint_dir": "checkpoint", "checkpoint_every": "checkpoint",
                "resume": "checkpoint", "jit": "compile"}


@restoring_param_store()
def fit(
    model,
    data,
    *,
    guide: Callable | None = None,
    objective: str = "reparam",
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
    kl_warmup: float | str = "auto",
    score_baseline: str = "decaying",
    data_plate: str = DATA_PLATE,
    checkpoint: str | os.PathLike | Checkpointing | None = None,
    compile: bool | str | Compilation = "auto",
    distributed: bool | Distribution = False,
    vectorize_particles: bool | None = None,
    **legacy,
) -> FitResult:
    """Train a model/guide pair by SVI: maximize ELBO(x) = E_q[log p(x, z) - log q(z | x)].

    Args:
        model: a ``LatentVariableModel``, any object with ``model``/``guide`` methods, a
            ``(model, guide)`` pair of callables, or a model callable with ``guide=``.
        data: x (tensor, array, nested list), a tuple (x, cond, ...) of per-example
            tensors passed to the model as ``model(x, *cond)``, or a torch DataLoader.
        objective: "reparam", "meanfield", "score", "iwae" or "enum" (see
            ``lvm_pyro.infer.objectives``).
        num_particles: samples of z per data point and step; None: the objective's default
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
        kl_warmup: epochs of linear KL annealing (a number >= 0); "auto" uses the model's
            default. A ``KLWarmup`` callback may be passed instead; both must then agree. A
            run that ends inside its warm-up warns (``KLWarmupWarning``): its losses are the
            annealed objective (see ``FitResult.betas``).
        score_baseline: "decaying", "neural" or "none" (objective "score" only).
        data_plate: the name of the model's plate over data points.
        checkpoint: a folder, or ``Checkpointing(dir, every=1, resume=False)``: write an
            atomic checkpoint every ``every`` epochs and at the end (also when ``steps=`` or a
            callback ends the run inside an epoch); ``resume=True`` continues from it, exactly:
            the resumed run equals an uninterrupted one bit for bit on CPU (with a DataLoader,
            only if its sampler is seeded), on the path (compiled or eager) its checkpoint
            records. A resumed run may change lr, clip_norm, epochs/steps, callbacks (paired
            with their saved states by ``Callback.state_key``), ``every``, val_data, device and
            compile, and uses the new values (its random state comes from the checkpoint,
            whatever ``seed``); any other difference (model, parameter shapes, optimizer type,
            data shape, objective, num_particles, data_plate, kl_warmup) is refused with a
            ``CheckpointError`` listing them. Without ``resume=True`` a folder that already
            holds a checkpoint is refused. The folder is locked while ``fit`` runs.
        compile: capture the training step as a graph (``lvm_pyro.infer.compile``: make_fx
            and TorchInductor; objectives "reparam", "meanfield", "iwae"), verified against
            the eager step before use, with a fallback to eager. "auto" (default) compiles
            when the run is long enough to repay compiling (``graph_pays_off``: planned steps
            x parameter elements x batch rows >= 1e10, and >= 2,000 steps), True always, False
            never, or a ``Compilation``. The rule is fixed, so reruns and resumptions are
            bit-identical; the two paths agree to rounding. Compiling a shape takes about half
            a minute the first time on a machine, then seconds (PyTorch's on-disk cache);
            ``FitResult.compile_time`` reports it.
        distributed: data-parallel training in a torch.distributed group (launch with
            ``torchrun --nproc_per_node=P``; True or a ``Distribution``): ``batch_size`` is the
            global batch, split over the processes, gradients summed; rank 0 shows progress
            and writes checkpoints.
        vectorize_particles: draw the particles in one vectorized pass (None: where the model
            broadcasts over them).

    The former names ``estimator=``, ``checkpoint_dir=``, ``checkpoint_every=``, ``resume=`` and
    ``jit=`` are still accepted, with a ``FutureWarning`` naming the current spelling.

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
    objective, checkpoint, compile = _legacy_arguments(legacy, objective, checkpoint, compile)
    callbacks = _check_args(
        objective=objective, num_particles=num_particles, batch_size=batch_size, epochs=epochs, steps=steps,
        optimizer=optimizer, lr=lr, clip_norm=clip_norm, seed=seed, callbacks=callbacks, progress=progress,
        kl_warmup=kl_warmup, score_baseline=score_baseline, vectorize_particles=vectorize_particles,
        data_plate=data_plate,
    )
    checkpointing = _as_checkpointing(checkpoint)
    compilation = Compilation.of(compile)
    distribution = _as_distribution(distributed)
    settings = dict(
        objective=objective, num_particles=num_particles, batch_size=batch_size, epochs=epochs, steps=steps,
        optimizer=optimizer, lr=float(lr), clip_norm=None if clip_norm is None else float(clip_norm),
        val_data=val_data, seed=None if seed is None else int(seed), progress=progress,
        kl_warmup=kl_warmup if kl_warmup == "auto" else float(kl_warmup), score_baseline=score_baseline,
        vectorize_particles=vectorize_particles, data_plate=data_plate, compilation=compilation,
    )
    program = as_program(model, guide)
    group, dev = join_group(resolve_device(device), distribution.enabled)
    main_process = group is None or group.is_main
    lock, ckpt_dir = None, None
    if checkpointing is not None:  # rank 0 writes; every rank reads when resuming
        ckpt_dir = prepare_directory(checkpointing.dir) if main_process else Path(checkpointing.dir)
        lock = RunLock(ckpt_dir).acquire() if main_process else None
    try:
        if lock is not None:
            remove_stray_files(ckpt_dir)
            if not checkpointing.resume:
                refuse_overwrite(ckpt_dir)
        trainer = _build_trainer(model, program, data, dev, group, main_process, ckpt_dir, checkpointing,
                                 callbacks, started, **settings)
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()


def _legacy_arguments(legacy: dict, objective, checkpoint, compile):
    """The ONE shim for fit's former keyword names: checked under their own names, turned into
    the current ones, with a FutureWarning naming the new spelling."""
    unknown = sorted(set(legacy) - set(LEGACY_NAMES))
    if unknown:
        raise ConfigurationError(
            f"fit() got an unexpected keyword argument {unknown[0]!r}: see help(lvm_pyro.fit) for its "
            "arguments")
    if not legacy:
        return objective, checkpoint, compile
    new = {
        "estimator": f"objective={legacy.get('estimator')!r}",
        "checkpoint_dir": "checkpoint=Checkpointing(dir, every=..., resume=...) (or checkpoint=dir)",
        "checkpoint_every": "checkpoint=Checkpointing(dir, every=...)",
        "resume": "checkpoint=Checkpointing(dir, resume=True)",
        "jit": f"compile={legacy.get('jit')!r}",
    }
    warnings.warn(
        "fit(" + ", ".join(f"{k}=" for k in legacy) + ") is a former spelling; use "
        + "; ".join(dict.fromkeys(new[k] for k in legacy)), FutureWarning, stacklevel=3,
    )
    if "estimator" in legacy:
        if objective != "reparam":
            raise ConfigurationError("pass objective= or its former name estimator=, not both")
        objective = legacy["estimator"]
        _check_objective(objective, "estimator")
    if "jit" in legacy:
        if not (isinstance(compile, str) and compile == "auto"):
            raise ConfigurationError("pass compile= or its former name jit=, not both")
        compile = Compilation.of(legacy["jit"], name="jit")
    if {"checkpoint_dir", "checkpoint_every", "resume"} & set(legacy):
        if checkpoint is not None:
            raise ConfigurationError(
                "pass checkpoint= or the former checkpoint_dir=/checkpoint_every=/resume=, not both")
        directory = legacy.get("checkpoint_dir")
        every, resume = legacy.get("checkpoint_every", 1), legacy.get("resume", False)
        check_int(every, "checkpoint_every", 1)
        if not isinstance(resume, bool):
            raise ConfigurationError(f"resume={resume!r}: pass True or False")
        if directory is None:
            if resume:
                raise ConfigurationError("resume=True needs checkpoint_dir, the folder of the run to resume")
            return objective, None, compile
        _check_directory(directory, "checkpoint_dir")
        checkpoint = Checkpointing(directory, every=every, resume=resume)
    return objective, checkpoint, compile


def _check_objective(objective, label: str = "objective") -> None:
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ConfigurationError(
            f"unknown {label} {objective!r}; valid {label}s: {', '.join(OBJECTIVES)}"
        )


def _check_directory(directory, label: str) -> None:
    if not isinstance(directory, (str, os.PathLike)) or str(directory) == "":
        raise ConfigurationError(f"{label}={directory!r}: pass a folder path (str or pathlib.Path)")


def _as_checkpointing(checkpoint) -> Checkpointing | None:
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, Checkpointing):
        _check_directory(checkpoint, "checkpoint")
        return Checkpointing(checkpoint)
    _check_directory(checkpoint.dir, "Checkpointing dir")
    check_int(checkpoint.every, "Checkpointing every", 1)
    if not isinstance(checkpoint.resume, bool):
        raise ConfigurationError(f"Checkpointing(resume={checkpoint.resume!r}): pass True or False")
    return checkpoint


def _as_distribution(distributed) -> Distribution:
    if isinstance(distributed, Distribution):
        value = distributed.enabled
    else:
        value = distributed
    if not isinstance(value, bool):
        raise ConfigurationError(f"distributed={distributed!r}: pass True or False (or a Distribution)")
    return distributed if isinstance(distributed, Distribution) else Distribution(enabled=distributed)


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
        check_steps_without_closure(optimizer)
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


def _check_args(*, objective, num_particles, batch_size, epochs, steps, optimizer, lr, clip_norm, seed,
                callbacks, progress, kl_warmup, score_baseline, vectorize_particles,
                data_plate) -> list[Callback]:
    """Every argument of ``fit`` that is not data or model, checked before anything reaches torch."""
    _check_objective(objective)
    for value, label in ((num_particles, "num_particles"), (batch_size, "batch_size"), (epochs, "epochs"),
                         (steps, "steps")):
        if value is not None:
            check_int(value, label, 1)
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
    if not isinstance(progress, bool):
        raise ConfigurationError(f"progress={progress!r}: pass True or False")
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


def _warmup_callbacks(callbacks: list[Callback], kl_warmup, program: Program, objective: str) -> float:
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
        if objective in ("iwae", "enum"):
            raise ConfigurationError(
                f"a KLWarmup callback cannot be used with objective {objective!r} (its bound has no "
                "separate KL term): drop the callback, or use objective='reparam' or 'meanfield'"
            )
        return float(cb.epochs)
    warmup = program.kl_warmup if kl_warmup == "auto" else float(kl_warmup)
    if warmup > 0 and objective in ("iwae", "enum"):
        if kl_warmup != "auto":
            warnings.warn(f"kl_warmup is not applied with objective {objective!r} (its bound has no "
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


def _build_trainer(model, program: Program, data, dev, group, main_process: bool, ckpt_dir: Path | None,
                   checkpointing: Checkpointing | None, callbacks: list[Callback], started: float, *,
                   objective, num_particles, batch_size, epochs, steps, optimizer, lr, clip_norm, val_data,
                   seed, progress, kl_warmup, score_baseline, vectorize_particles, data_plate,
                   compilation: Compilation) -> Trainer:
    """Everything a run needs, checked and built, its checkpoint restored: the Trainer."""
    ckpt, shuffle_seed = _seed_and_checkpoint(seed, ckpt_dir, checkpointing, group, dev)
    batches, val_batches, first, check = _batches(data, val_data, program, dev, group, batch_size,
                                                  shuffle_seed)
    x0 = first[0]
    if program.module is not None:
        program.module.to(device=dev, dtype=x0.dtype if x0.is_floating_point() else None)
    if vectorize_particles is None and (num_particles or 1) > 1 and objective != "iwae":
        # particles in one vectorized pass where the model broadcasts over them, else in sequence
        vectorize_particles = broadcasts_over_particles(program, first, program.max_plate_nesting)
    loss = make_objective(objective, num_particles=num_particles, max_plate_nesting=program.max_plate_nesting,
                          vectorize_particles=vectorize_particles, score_baseline=score_baseline,
                          baseline_features=int(x0[0].numel()))
    for extra in loss.extra_modules:
        extra.to(device=dev, dtype=x0.dtype)
    warmup = _warmup_callbacks(callbacks, kl_warmup, program, objective)
    warmup_cb = next((cb for cb in callbacks if isinstance(cb, KLWarmup)), None)
    keys = _callback_keys(callbacks)

    scale = _training_scale(batches, x0, group, data_plate)
    claim_module_params(program.module)
    program, traced = check_program(program, scale, first, objective)
    if batches.batch_size < batches.num_data and not scale.saw_plate:
        raise ModelContractError(
            f"minibatches of {batches.batch_size} of {batches.num_data} points need the "
            f"observations inside pyro.plate({data_plate!r}, len(x)) so they can be scaled, and "
            f"the model has no plate named {data_plate!r}: name the model's plate over data points "
            f"with data_plate=..., add that plate to the model and guide, or pass "
            f"batch_size={batches.num_data}"
        )
    params = collect_params(program, loss, traced)
    param_list = list(params.values())
    if group is not None:
        group.broadcast_(param_list)
    opt = make_optimizer(optimizer, param_list, lr)
    total_steps = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * batches.steps_per_epoch
    use_graph, why = choose(compilation, objective, param_list, int(x0.shape[0]), total_steps)
    if ckpt is not None and compilation.enabled == "auto" and "compiled_path" in ckpt["config"]:
        use_graph, why = ckpt["config"]["compiled_path"], "auto: the path of the run being resumed"
    identity = _identity(program=program, loss=loss, batches=batches, first=first, opt=opt, group=group,
                         data_plate=data_plate, warmup=warmup, warmup_cb=warmup_cb, objective=objective,
                         score_baseline=score_baseline, params=params)
    config = {
        **_config(identity, objective=objective, steps_per_epoch=batches.steps_per_epoch,
                  total_steps=total_steps, optimizer=optimizer, lr=lr, clip_norm=clip_norm, seed=seed,
                  shuffle_seed=shuffle_seed, dev=dev, dtype=first[0].dtype),
        "compile": compilation.enabled,
        "compiled_path": use_graph,
        "compile_reason": why,
        "callbacks": keys,
    }
    trainer = Trainer(
        model=model, program=program, objective=loss, scale=scale, params=params, optimizer=opt,
        batches=batches, val_batches=val_batches, callbacks=callbacks, keys=keys, config=config,
        identity=identity, clip_norm=clip_norm, group=group, ckpt_dir=ckpt_dir,
        checkpoint_every=checkpointing.every if checkpointing is not None else 1,
        main_process=main_process, progress=progress, started=started, warmup_cb=warmup_cb,
    )
    if ckpt is not None:
        trainer.restore(ckpt, dev)
    if use_graph:
        _attach_compiled_step(trainer, compilation, first, check)
    config["compiled"] = trainer.compiled is not None and trainer.compiled.has_graph(first)
    return trainer


def _attach_compiled_step(trainer: Trainer, compilation: Compilation, first: tuple, check: tuple) -> None:
    """Record, compile and verify the trainer's step on the first batch's shapes (a failure
    warns and leaves the trainer eager)."""
    x0 = first[0]
    trainer.beta_input = x0.new_ones(()) if x0.is_floating_point() else trainer.beta_input
    step = CompiledStep(trainer.loss, trainer.param_list, trainer.opt, clip_norm=trainer.clip_norm,
                        mode=compilation.mode, rtol=compilation.rtol, eager_update=trainer.group is not None)
    with pyro.validation_enabled(False):
        step.prepare(first, check, trainer.beta_input)
    trainer.compiled = step


def _seed_and_checkpoint(seed, ckpt_dir: Path | None, checkpointing: Checkpointing | None, group, dev):
    """Seed Pyro; the checkpoint to resume (or None) and the seed of the batch order (the
    resumed run's own, and one for every process of a group)."""
    if seed is not None:
        pyro.set_rng_seed(seed)
    shuffle_seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
    resume = checkpointing is not None and checkpointing.resume
    ckpt = load_checkpoint(checkpoint_path(ckpt_dir), complete=True) if resume else None
    if ckpt is not None:  # the batch order (and validation noise) of the run being resumed
        shuffle_seed = ckpt["config"]["shuffle_seed"]
    if group is not None:
        # one batch order for every rank; each rank its own noise
        shuffle_seed = group.broadcast_int(shuffle_seed, dev)
        pyro.set_rng_seed(shuffle_seed % 2**32 + group.rank)
    return ckpt, shuffle_seed


def _batches(data, val_data, program: Program, dev, group, batch_size, shuffle_seed: int):
    """The training and validation batches, and the first two batches of the first epoch (the
    second, of the same shape, verifies a compiled step); the epoch is rewound after."""
    batches = make_batches(data, program, dev, batch_size=batch_size, seed=shuffle_seed)
    val_batches = (
        make_batches(val_data, program, dev, batch_size=None, shuffle=False, name="val_data",
                     max_batch_size=batches.batch_size)
        if val_data is not None else None
    )
    first_batches = iter(batches.epoch())
    first = next(first_batches)
    check = next(first_batches, first)
    batches.rewind_epoch(batches.epoch_start_state)
    if group is not None:
        if batches.batch_size < group.world_size:
            raise ConfigurationError(
                f"batch_size={batches.batch_size} is smaller than the {group.world_size} processes: "
                "pass a global batch_size of at least one example per process"
            )
        first, check = group.shard(first), group.shard(check)
    return batches, val_batches, first, check


def _training_scale(batches, x0: torch.Tensor, group, data_plate: str) -> TrainingScale:
    """How a minibatch's log-densities are scaled to the whole data set (and a shard's to its
    share of the global batch: data sites count N / B each, global sites 1 / P)."""
    scale = TrainingScale(batches.num_data, plate=data_plate)
    if group is not None:
        scale.num_data = batches.num_data * x0.shape[0] / batches.batch_size
        scale.global_scale = 1.0 / group.world_size
    return scale


def _identity(*, program, loss, batches, first, opt, group, data_plate, warmup, warmup_cb, objective,
              score_baseline, params) -> dict:
    """What a checkpoint must match to be resumed (anything else differing is refused)."""
    return {
        "estimator": objective,  # (the checkpoint format's key for the objective)
        "num_particles": loss.elbo.num_particles,
        "batch_size": batches.batch_size,
        "num_data": batches.num_data,
        "data": [[list(t.shape[1:]), str(t.dtype)] for t in first],
        "optimizer": f"{type(opt).__module__}.{type(opt).__qualname__}",
        "data_plate": data_plate,
        "kl_warmup": warmup,
        "kl_warmup_start": warmup_cb.start if warmup_cb is not None else 0.0,
        "score_baseline": score_baseline if objective == "score" else None,
        "model": type(program.source).__name__ if program.source is not None else "callable",
        "world_size": group.world_size if group is not None else 1,
        "parameters": shapes(program, params),
    }


def _config(identity: dict, *, objective, steps_per_epoch, total_steps, optimizer, lr, clip_norm, seed,
            shuffle_seed, dev, dtype) -> dict:
    """The run's settings as ``FitResult.config`` reports them (and the checkpoint stores); the
    ones a resumed run must match are read from its ``identity``."""
    return {
        "objective": objective,
        "estimator": objective,
        "num_particles": identity["num_particles"],
        "batch_size": identity["batch_size"],
        "num_data": identity["num_data"],
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom"),
        "lr": lr,
        "clip_norm": clip_norm,
        "seed": seed,
        "shuffle_seed": shuffle_seed,
        "device": str(dev),
        "dtype": str(dtype),
        "kl_warmup": identity["kl_warmup"],
        "score_baseline": identity["score_baseline"],
        "data_plate": identity["data_plate"],
        "model": identity["model"],
        "world_size": identity["world_size"],
    }
