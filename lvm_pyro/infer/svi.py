"""``fit``: stochastic variational inference for any Pyro model/guide pair.

Each step draws a minibatch, estimates the negative ELBO -E_q[log p(x, z) - log q(z | x)]
(scaled so that it estimates the full-data value) with the chosen gradient estimator,
backpropagates, and takes an optimizer step. Losses are reported per data point.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from lvm_pyro.data import resolve_device
from lvm_pyro.errors import CheckpointError, ConfigurationError, DivergenceError, ModelContractError
from lvm_pyro.infer.batching import make_batches
from lvm_pyro.infer.callbacks import Callback, KLWarmup, TrainState
from lvm_pyro.infer.checkpoint import (
    checkpoint_path,
    get_rng_state,
    load_checkpoint,
    prepare_directory,
    save_checkpoint,
    set_rng_state,
)
from lvm_pyro.infer.compiled import COMPILABLE, CompiledLoss
from lvm_pyro.infer.distributed import join_group
from lvm_pyro.infer.evaluate import dataset_loss
from lvm_pyro.infer.objectives import Objective, TrainingScale, make_objective
from lvm_pyro.infer.params import claim_module_params
from lvm_pyro.models.base import DATA_PLATE, Program, as_program

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
DEFAULT_EPOCHS = 50


@dataclass
class FitResult:
    """What ``fit`` returns.

    ``losses``: negative ELBO per data point after each step (training batch estimate);
    ``epoch_losses``: their mean per epoch; ``val_elbo``: held-out ELBO per data point after
    each epoch; ``model``: the trained model (as passed in); ``config``: every setting.
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

    @property
    def elbo(self) -> float:
        """Training ELBO per data point over the last epoch (or the last step)."""
        last = self.epoch_losses[-1] if self.epoch_losses else self.losses[-1]
        return -last


FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def _fusable(params: list[torch.Tensor]) -> bool:
    """Fused Adam (one kernel for every tensor) needs floating tensors on one CPU/CUDA device."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() for p in params)
    )


def _make_optimizer(optimizer, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ConfigurationError(
                f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}, a torch.optim "
                "class, or a callable params -> optimizer"
            )
        cls = OPTIMIZERS[optimizer]
        if cls in FUSABLE and _fusable(params):
            return cls(params, lr=lr, fused=True)
        return cls(params, lr=lr)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params, lr=lr)
    if callable(optimizer):
        return optimizer(params)
    raise ConfigurationError(
        f"optimizer must be a name, a torch.optim class or a callable, got {optimizer!r}"
    )


def _latent_sites_missing_from_guide(model_trace, guide_trace) -> list[str]:
    return [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["is_observed"]
        and not site["infer"].get("enumerate")
        and not site["infer"].get("is_auxiliary")
        and name not in guide_trace.nodes
    ]


def _setup_trace(program: Program, scale: TrainingScale, batch: tuple, estimator: str):
    """Run guide then model once (validation on); check the contract; collect parameters."""
    with pyro.validation_enabled(True), poutine.trace() as guide_tape:
        scale(program.guide)(*batch)
    guide_trace = guide_tape.trace
    with pyro.validation_enabled(True), poutine.trace() as model_tape:
        poutine.replay(scale(program.model), trace=guide_trace)(*batch)
    model_trace = model_tape.trace
    missing = _latent_sites_missing_from_guide(model_trace, guide_trace)
    if missing:
        raise ModelContractError(
            f"the guide does not sample the model's latent site(s) {missing}: add "
            f"pyro.sample({missing[0]!r}, ...) to the guide, or, for a discrete site, mark it "
            "infer={'enumerate': 'parallel'} in the model and use estimator='enum'"
        )
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


def fit(
    model,
    data,
    *,
    guide: Callable | None = None,
    estimator: str = "reparam",
    num_particles: int = 1,
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
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    kl_warmup: float | str = "auto",
    score_baseline: str = "decaying",
    vectorize_particles: bool | None = None,
    data_plate: str = DATA_PLATE,
    jit: bool | str = True,
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
        num_particles: samples of z per data point and step (K for "iwae", default 5).
        batch_size: minibatch size (default min(N, 128)); sites in the plate named
            ``data_plate`` are scaled by N / batch size.
        epochs / steps: how long to train (one of them; default 50 epochs).
        optimizer, lr, clip_norm: a torch optimizer name/class/factory, its learning rate,
            and optional gradient-norm clipping. "adam" and "adamw" use torch's fused
            implementation (one kernel for all tensors) where the parameters allow it.
        val_data: held-out data; its ELBO per data point is recorded after every epoch.
        device: "auto" (CUDA when available), "cpu", "cuda", ...; data and model move there;
            the model also takes the data's floating dtype.
        seed: seeds Pyro, torch, numpy and the batch order for a reproducible run.
        callbacks: ``lvm_pyro.infer.callbacks`` objects (early stopping, convergence, LR
            schedule, KL warm-up).
        progress: show a tqdm bar with the loss.
        checkpoint_dir, checkpoint_every, resume: write an atomic checkpoint every
            ``checkpoint_every`` epochs (and at the end); ``resume=True`` continues from it.
        kl_warmup: epochs of linear KL annealing; "auto" uses the model's default.
        score_baseline: "decaying", "neural" or "none" (estimator "score" only).
        jit: for "reparam", "meanfield" and "iwae", record the loss once per batch shape as
            one torch graph (``lvm_pyro.infer.compiled``), verified against the eager loss
            and gradients before use, with a fallback to eager, and kept only if a timed trial
            finds it faster. Both paths follow the same trajectory up to rounding (about 1e-7
            relative); ``jit=False`` gives bit-identical reruns and resumptions.
            ``jit="inductor"`` also compiles that graph with ``torch.compile`` (fused kernels;
            seconds to a minute of compiling first, so for long runs of large models).
        distributed: data-parallel training in a torch.distributed group (launch with
            ``torchrun --nproc_per_node=P``): ``batch_size`` is the global batch, split over
            the processes, gradients summed (``lvm_pyro.infer.distributed``); rank 0 shows
            progress and writes checkpoints.

    Raises DivergenceError (with ``.result`` holding the history so far) when a loss or
    gradient is not finite; the parameters are those of the last finite step and the last
    checkpoint is untouched.

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
        >>> abs(float(pyro.param("loc")) - 3) < 0.5
        True
    """
    started = time.perf_counter()
    program = as_program(model, guide)
    dev = resolve_device(device)
    group, dev = join_group(dev, distributed)
    if epochs is not None and steps is not None:
        raise ConfigurationError("pass epochs or steps, not both")
    for value, label in ((epochs, "epochs"), (steps, "steps"), (checkpoint_every, "checkpoint_every")):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"{label} must be a positive integer, got {value!r}")
    if resume and checkpoint_dir is None:
        raise ConfigurationError("resume=True needs checkpoint_dir, the folder of the run to resume")
    main_process = group is None or group.is_main
    ckpt_dir = None
    if checkpoint_dir is not None:  # rank 0 writes; every rank reads when resuming
        ckpt_dir = prepare_directory(checkpoint_dir) if main_process else Path(checkpoint_dir)
    if seed is not None:
        pyro.set_rng_seed(seed)
    shuffle_seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
    if group is not None:
        # one batch order for every rank; each rank its own noise
        shuffle_seed = group.broadcast_int(shuffle_seed, dev)
        pyro.set_rng_seed(shuffle_seed + group.rank)

    batches = make_batches(data, program, dev, batch_size=batch_size, seed=shuffle_seed)
    val_batches = (
        make_batches(val_data, program, dev, batch_size=None, shuffle=False, name="val_data",
                     max_batch_size=batches.batch_size)
        if val_data is not None else None
    )
    first = next(iter(batches.epoch()))
    batches.rewind_epoch(batches.epoch_start_state)
    if group is not None:
        if batches.batch_size < group.world_size:
            raise ConfigurationError(
                f"batch_size={batches.batch_size} is smaller than the {group.world_size} processes: "
                "pass a global batch_size of at least one example per process"
            )
        first = group.shard(first)
    x0 = first[0]
    if program.module is not None:
        program.module.to(device=dev, dtype=x0.dtype if x0.is_floating_point() else None)

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
    warmup = program.kl_warmup if kl_warmup == "auto" else float(kl_warmup or 0.0)
    if warmup > 0 and estimator in ("iwae", "enum"):
        if kl_warmup != "auto":
            warnings.warn(f"kl_warmup is not applied with estimator {estimator!r} (its bound has no "
                          "separate KL term)", stacklevel=2)
        warmup = 0.0
    callbacks = list(callbacks)
    if warmup > 0 and not any(isinstance(cb, KLWarmup) for cb in callbacks):
        callbacks.insert(0, KLWarmup(warmup))

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
            f"observations inside pyro.plate({data_plate!r}, len(x)) so they can be scaled: add "
            f"that plate to the model and guide, or pass batch_size={batches.num_data}"
        )
    params = _collect_params(program, objective, traced)
    param_list = list(params.values())
    if group is not None:
        group.broadcast_(param_list)
    opt = _make_optimizer(optimizer, param_list, lr)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * steps_per_epoch
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
        "model": type(program.source).__name__ if program.source is not None else "callable",
        "world_size": group.world_size if group is not None else 1,
    }
    state = TrainState(
        num_data=batches.num_data,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        optimizer=opt,
        params=params,
    )
    partial = {"sum": 0.0, "count": 0}
    model_fn, guide_fn = scale(program.model), scale(program.guide)
    compiled = None
    if jit and estimator in COMPILABLE:
        annealing = any(isinstance(cb, KLWarmup) for cb in callbacks)
        beta_input = x0.new_tensor(1.0)

        def loss_fn(*args):
            scale.beta = args[-1] if annealing else 1.0
            return objective.differentiable_loss(model_fn, guide_fn, *args[:-1])

        compiled = CompiledLoss(loss_fn, param_list, backend="inductor" if jit == "inductor" else "script")

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
                    "partial": dict(partial),
                },
                "callbacks": [cb.state_dict() for cb in callbacks],
                "config": config,
            },
        )

    if resume:
        ckpt = load_checkpoint(checkpoint_path(ckpt_dir))
        old = ckpt["config"]
        for key in ("estimator", "batch_size", "num_data"):
            if old.get(key) != config[key]:
                raise CheckpointError(
                    f"the checkpoint in {str(ckpt_dir)!r} was made with {key}={old.get(key)!r}, "
                    f"this run has {key}={config[key]!r}: resume with the same settings and data"
                )
        if set(ckpt["params"]) != set(params):
            raise CheckpointError(
                f"the checkpoint in {str(ckpt_dir)!r} holds parameters of a different model: "
                "resume with the model that wrote it"
            )
        if program.module is not None and ckpt["module"]:
            program.module.load_state_dict(ckpt["module"])
        with torch.no_grad():
            for k, v in ckpt["params"].items():
                params[k].copy_(v)
        for k, v in ckpt["param_store"].items():
            pyro.get_param_store()[k] = v.to(dev)
        opt.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        batches.rewind_epoch(ckpt["shuffle_state"])
        state.step, state.epoch = ckpt["counters"]["step"], ckpt["counters"]["epoch"]
        state.losses = list(ckpt["history"]["losses"])
        state.epoch_losses = list(ckpt["history"]["epoch_losses"])
        state.val_elbo = list(ckpt["history"]["val_elbo"])
        partial.update(ckpt["history"]["partial"])
        for cb, cb_state in zip(callbacks, ckpt["callbacks"], strict=False):
            cb.load_state_dict(cb_state)

    for cb in callbacks:
        cb.on_fit_start(state)
    bar = tqdm(total=total_steps, initial=state.step, desc=f"fit[{estimator}]", unit="step",
               disable=not (progress and main_process), dynamic_ncols=True)
    try:
        with pyro.validation_enabled(False):
            while state.step < total_steps and not state.stop:
                skip = state.step - state.epoch * steps_per_epoch
                if skip == 0:
                    partial.update(sum=0.0, count=0)
                for batch in batches.epoch(skip=skip):
                    if group is not None:
                        batch = group.shard(batch)
                    for cb in callbacks:
                        cb.on_step_start(state)
                    opt.zero_grad(set_to_none=True)
                    step_started = time.perf_counter()
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
                            f"{state.step}. Lower the learning rate (lr={lr}), clip gradients "
                            "(clip_norm=10.0), or check the data and model scales"
                        )
                        err.result = _result(model, program, state, config, started, params)
                        raise err
                    if clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(param_list, clip_norm)
                    opt.step()
                    if compiled is not None:
                        compiled.record(time.perf_counter() - step_started)
                    per_point = loss / batches.num_data
                    state.losses.append(per_point)
                    partial["sum"] += per_point
                    partial["count"] += 1
                    state.step += 1
                    bar.update(1)
                    for cb in callbacks:
                        cb.on_step_end(state)
                    if state.step >= total_steps or state.stop:
                        break
                if partial["count"] and (state.step % steps_per_epoch == 0 or state.step >= total_steps):
                    state.epoch_losses.append(partial["sum"] / partial["count"])
                    if state.step % steps_per_epoch == 0:
                        state.epoch += 1
                    if val_batches is not None:
                        state.val_elbo.append(-dataset_loss(program, objective, val_batches))
                    postfix = {"loss": f"{state.epoch_losses[-1]:.4g}"}
                    if state.val_elbo:
                        postfix["val_elbo"] = f"{state.val_elbo[-1]:.4g}"
                    bar.set_postfix(postfix, refresh=False)
                    for cb in callbacks:
                        cb.on_epoch_end(state)
                    partial.update(sum=0.0, count=0)
                    if state.epoch % checkpoint_every == 0 or state.step >= total_steps or state.stop:
                        write_checkpoint()
    finally:
        bar.close()
    for cb in callbacks:
        cb.on_fit_end(state)
    if not state.stop_reason:
        state.stop_reason = "completed"
    config["compiled"] = compiled is not None and compiled.active and bool(compiled.graphs)
    if compiled is not None:
        config["compiled_speedup"] = compiled.speedup
        if not compiled.active:
            config["compile_fallback"] = compiled.fallback_reason
    return _result(model, program, state, config, started, params)


def _result(model, program, state: TrainState, config: dict, started: float, params) -> FitResult:
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
    )
