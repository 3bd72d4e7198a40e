"""The training loop of ``fit``: one :meth:`Trainer.step`, schedules, checkpoints, callbacks.

A step is ``loss(batch, beta)`` (THE loss: the objective's differentiable negative ELBO of
one minibatch, scaled to the full data, with the KL weight ``beta`` passed in), its backward
pass and an optimizer update. The eager path runs exactly that; the compiled path
(``lvm_pyro.infer.compile``) runs a graph recorded from that same ``loss`` function. Schedules
(the KL warm-up, learning-rate schedules) are callbacks that set ``state.beta`` or the
optimizer's learning rate; the loop passes ``state.beta`` to :meth:`Trainer.step`.

Configuration objects: :class:`Checkpointing` (where and how often to save, whether to
resume), ``lvm_pyro.infer.compile.Compilation`` (graph capture) and :class:`Distribution`
(data-parallel training).
"""

from __future__ import annotations

import inspect
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from lvm_pyro.errors import CheckpointError, ConfigurationError, DivergenceError, LVMError, ModelContractError
from lvm_pyro.infer.callbacks import Callback, KLWarmup, KLWarmupWarning, TrainState
from lvm_pyro.infer.checkpoint import (
    checkpoint_path,
    get_rng_state,
    identity_differences,
    save_checkpoint,
    set_rng_state,
)
from lvm_pyro.infer.compile import CompiledStep
from lvm_pyro.infer.evaluate import dataset_loss
from lvm_pyro.infer.logdensity import (
    PAIR_ERRORS,
    MarginalizeMissing,
    check_guide,
    data_frame,
    pair_failed,
    sample_sites,
    summing_out_missing,
)
from lvm_pyro.infer.objectives import Objective, TrainingScale, iwae_site_error
from lvm_pyro.models.base import Program

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
FUSABLE = (torch.optim.Adam, torch.optim.AdamW)
#: what a resumed run may change (and then uses); any other difference is refused. (``seed``
#: plays no part in a resumed run: its random state comes from the checkpoint.)
RESUMABLE_CHANGES = ("lr", "clip_norm", "epochs", "steps", "callbacks", "checkpoint.every", "val_data",
                     "progress", "device", "compile")


@dataclass(frozen=True)
class Checkpointing:
    """``fit(checkpoint=...)``: write a checkpoint into ``dir`` every ``every`` epochs and at the
    end; ``resume=True`` continues the run saved there, exactly.

    Example:
        >>> Checkpointing("runs/a", every=5).every
        5
    """

    dir: str | os.PathLike
    every: int = 1
    resume: bool = False


@dataclass(frozen=True)
class Distribution:
    """``fit(distributed=...)``: data-parallel training in the torch.distributed group that
    ``torchrun`` describes (``enabled=True``; ``fit(distributed=True)`` is the short form).

    Example:
        >>> Distribution().enabled
        True
    """

    enabled: bool = True


@dataclass(repr=False)
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
    ``model``: the trained model (as passed in); ``config``: every setting;
    ``compile_time``: seconds spent recording, compiling and verifying the step graph (0 on
    the eager path; ``config["compiled"]`` says which path ran).
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
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    betas: list[float] = field(default_factory=list)
    epoch_betas: list[float] = field(default_factory=list)
    partial_epoch: bool = False
    compile_time: float = 0.0

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

    def __repr__(self) -> str:
        last = self.epoch_losses[-1] if self.epoch_losses else (self.losses[-1] if self.losses else math.nan)
        path = "compiled step" if self.config.get("compiled") else "eager"
        val = f", val ELBO {self.val_elbo[-1]:.4f}" if self.val_elbo else ""
        compile_note = f" (compile {self.compile_time:.1f} s)" if self.compile_time else ""
        return (
            f"FitResult({self.config.get('model', '?')}, objective {self.config.get('objective', '?')!r}: "
            f"final loss {last:.4f} nats/point ({self.objective.split(' (')[0]}){val}\n"
            f"  {self.epochs} epochs, {self.steps} steps, {path}{compile_note}, {self.wall_time:.1f} s; "
            f"stop: {self.stop_reason or 'n/a'})"
        )


# -- setting up --------------------------------------------------------------------------------


def fusable(params: list[torch.Tensor]) -> bool:
    """Fused Adam (one kernel for every tensor) needs floating tensors on one CPU/CUDA device."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() for p in params)
    )


def check_steps_without_closure(cls: type) -> None:
    """The loop calls ``opt.step()``: an optimizer whose step needs a closure (LBFGS) cannot be used."""
    closure = inspect.signature(cls.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigurationError(
            f"optimizer {cls.__name__} needs a closure at every step (it re-evaluates the loss), which "
            "stochastic minibatch training does not provide: use 'adam', 'adamw', 'sgd', 'rmsprop' or "
            "'adagrad'"
        )


def make_optimizer(optimizer, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        cls = OPTIMIZERS[optimizer]
        if cls in FUSABLE and fusable(params):
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
    check_steps_without_closure(type(opt))
    return opt


def check_program(program: Program, scale: TrainingScale, batch: tuple,
                  objective: str) -> tuple[Program, dict]:
    """Run guide then model once (validation on); check the contract. Returns the program to
    train (its model summing out ``obs_mask``'s missing entries that the guide does not impute:
    ``logdensity.summing_out_missing``) and the parameters they read."""
    try:
        with pyro.validation_enabled(True), poutine.trace() as guide_tape:
            scale(program.guide)(*batch)
        guide_trace = guide_tape.trace
        missing = MarginalizeMissing(sampled=guide_trace.nodes)
        with pyro.validation_enabled(True), poutine.trace() as model_tape:
            poutine.replay(scale(missing(program.model)), trace=guide_trace)(*batch)
        model_trace = model_tape.trace
    except LVMError:
        raise
    except PAIR_ERRORS as exc:
        raise pair_failed(exc, batch) from exc
    check_guide(model_trace, guide_trace)
    if objective == "iwae":  # refused here, before a vectorized run a global site may not survive
        outside = [s["name"] for s in sample_sites(guide_trace) if data_frame(s, scale.plate) is None]
        if outside:
            raise iwae_site_error(outside[0], scale.plate)
    enumerated = [
        n for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and s["infer"].get("enumerate") and not s["is_observed"]
    ]
    if objective == "meanfield":
        discrete = [
            n for n, s in guide_trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
            and not s["fn"].has_rsample
        ]
        if discrete:
            raise ConfigurationError(
                f"estimator 'meanfield' needs reparameterizable guide sites, but {discrete} cannot be "
                "reparameterized (discrete?): use objective='score' or 'iwae' (or 'reparam', which "
                "adds score-function terms for them)"
            )
    if enumerated and objective != "enum":
        raise ConfigurationError(
            f"the model marks {enumerated} for enumeration: use objective='enum' (or em) to "
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
    return summing_out_missing(program, guide_trace, missing), params


def _module_param_names(module: torch.nn.Module) -> set[str]:
    names = set()
    for name, _ in module.named_parameters():
        names.add(name)
        names.add(name.removesuffix("_unconstrained"))  # a PyroParam's Pyro name
    return names


def collect_params(program: Program, objective: Objective, traced: dict[str, torch.Tensor]):
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
        # 'enc$$$0.weight' (a pyro.module parameter) is the module's 'enc.0.weight'
        if id(p) not in seen and name.replace("$$$", ".") not in own:
            seen.add(id(p))
            named[f"param.{name}"] = p
    if not named:
        raise ModelContractError(
            "the model and guide have no trainable parameters: declare them with pyro.param, "
            "pyro.module, or as parameters of a PyroModule"
        )
    return named


def shapes(program: Program, params: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Every saved tensor's shape by name: trained parameters and the module's buffers."""
    out = {name: list(p.shape) for name, p in params.items()}
    if program.module is not None:
        for name, value in program.module.state_dict().items():
            out.setdefault(f"module.{name}", list(value.shape))
    return out


def _loss_and_finite(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> tuple[float, bool]:
    """The loss as a float and whether it and every gradient are finite, in one device sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        value = loss.detach().item()
        return value, math.isfinite(value)
    value, total = torch.stack((loss.detach(), torch.stack(torch._foreach_norm(grads)).sum())).tolist()
    return value, math.isfinite(value) and math.isfinite(total)


# -- the loop ----------------------------------------------------------------------------------


class Trainer:
    """Owns a training run: the loss, one step, the epoch loop, checkpoints and callbacks.

    ``scale`` holds the minibatch and data-parallel scaling (num_data, plate, global_scale);
    the KL weight ``beta`` is an argument of :meth:`Trainer.loss` and :meth:`Trainer.step`, never stored.
    ``compiled`` (a prepared ``CompiledStep`` or None) replaces the eager step where it has a
    graph for the batch's shapes.
    """

    def __init__(self, *, model, program: Program, objective: Objective, scale: TrainingScale,
                 params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, batches, val_batches,
                 callbacks: list[Callback], keys: list[str], config: dict, identity: dict,
                 clip_norm: float | None, group, ckpt_dir: Path | None, checkpoint_every: int,
                 main_process: bool, progress: bool, started: float, warmup_cb: KLWarmup | None) -> None:
        self.model, self.program, self.objective, self.scale = model, program, objective, scale
        self.params, self.param_list, self.opt = params, list(params.values()), optimizer
        self.batches, self.val_batches = batches, val_batches
        self.callbacks, self.keys = callbacks, keys
        self.config, self.identity = config, identity
        self.clip_norm, self.group = clip_norm, group
        self.ckpt_dir, self.checkpoint_every = ckpt_dir, checkpoint_every
        self.main_process, self.progress, self.started = main_process, progress, started
        self.warmup_cb = warmup_cb
        self.compiled: CompiledStep | None = None
        self.beta_input = torch.ones(())  # beta as a graph input (set to the data's dtype by fit)
        self.state = TrainState(num_data=batches.num_data, steps_per_epoch=batches.steps_per_epoch,
                                total_steps=config["total_steps"], optimizer=optimizer, params=params)
        self.partial = {"sum": 0.0, "count": 0, "beta_sum": 0.0}
        self.saved_at = -1
        self.val_seed = (config["shuffle_seed"] + 1) % 2**63

    # -- one step ------------------------------------------------------------------------------

    def loss(self, batch: tuple, beta: float | torch.Tensor) -> torch.Tensor:
        """THE loss: the objective's negative ELBO of ``batch``, scaled to the full data, latent
        sites weighted by ``beta`` (a float, or a 0-d tensor when recorded into a graph)."""
        s = self.scale
        scale = TrainingScale(s.num_data, beta=beta, plate=s.plate, global_scale=s.global_scale)
        program = self.program
        return self.objective.differentiable_loss(scale(program.model), scale(program.guide), *batch)

    def step(self, batch: tuple, beta: float) -> float:
        """One step (loss, backward, update) at KL weight ``beta``; the loss as a float.

        Raises ``DivergenceError`` (parameters left as before the step) when the loss or a
        gradient is not finite.
        """
        compiled = self.compiled
        if compiled is not None and compiled.has_graph(batch):
            self.beta_input.fill_(beta)
            out = compiled(batch, self.beta_input)
            if compiled.mode == "step":
                loss, norm = out.tolist()
                finite = math.isfinite(loss) and math.isfinite(norm)
                if not finite:
                    raise self._divergence(loss)
                return loss
            loss_t = out[0]
        else:
            self.opt.zero_grad(set_to_none=True)
            loss_t = self.loss(batch, beta)
            loss_t.backward()
        if self.group is not None:
            loss_t = self.group.all_reduce_step(loss_t.detach(), self.param_list)
        loss, finite = _loss_and_finite(loss_t, self.param_list)
        if not finite:
            raise self._divergence(loss)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.param_list, self.clip_norm)
        self.opt.step()
        return loss

    def _divergence(self, loss: float) -> DivergenceError:
        state = self.state
        err = DivergenceError(
            f"non-finite loss or gradient at step {state.step + 1} (epoch {state.epoch + 1}, loss {loss}); "
            f"the parameters are those after step {state.step}. Lower the learning rate "
            f"(lr={self.config['lr']}), clip gradients (clip_norm=10.0), or check the data and model "
            "scales; with a checkpoint, resume=True with a lower lr continues from the last checkpoint"
        )
        err.result = self.result()
        return err

    # -- the loop ------------------------------------------------------------------------------

    def validate(self) -> float:
        """Held-out ELBO from a fixed noise stream; the training RNG state is left as it was."""
        rng = get_rng_state()
        try:
            torch.manual_seed(self.val_seed)
            return -dataset_loss(self.program, self.objective, self.val_batches, plate=self.scale.plate)
        finally:
            set_rng_state(rng)

    def run(self) -> FitResult:
        state, partial, batches, callbacks = self.state, self.partial, self.batches, self.callbacks
        steps_per_epoch, total_steps = state.steps_per_epoch, state.total_steps
        for cb in callbacks:
            cb.on_fit_start(state)
        bar = tqdm(total=total_steps, initial=state.step, desc=f"fit[{self.config['objective']}]",
                   unit="step", disable=not (self.progress and self.main_process), dynamic_ncols=True)
        try:
            with pyro.validation_enabled(False):
                while state.step < total_steps and not state.stop:
                    skip = state.step - state.epoch * steps_per_epoch
                    if skip == 0:
                        partial.update(sum=0.0, count=0, beta_sum=0.0)
                    for batch in batches.epoch(skip=skip):
                        if self.group is not None:
                            batch = self.group.shard(batch)
                        for cb in callbacks:
                            cb.on_step_start(state)
                        per_point = self.step(batch, float(state.beta)) / batches.num_data
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
                        self._end_epoch(bar)
                if self.saved_at != state.step:  # the run ended inside an epoch: its final checkpoint
                    self.save()
        finally:
            bar.close()
        return self._finish()

    def _end_epoch(self, bar) -> None:
        state, partial = self.state, self.partial
        state.epoch_losses.append(partial["sum"] / partial["count"])
        state.epoch_betas.append(partial["beta_sum"] / partial["count"])
        state.epoch += 1
        if self.val_batches is not None:
            state.val_elbo.append(self.validate())
        postfix = {"loss": f"{state.epoch_losses[-1]:.4g}"}
        if state.val_elbo:
            postfix["val_elbo"] = f"{state.val_elbo[-1]:.4g}"
        bar.set_postfix(postfix, refresh=False)
        for cb in self.callbacks:
            cb.on_epoch_end(state)
        partial.update(sum=0.0, count=0, beta_sum=0.0)
        if state.epoch % self.checkpoint_every == 0 or state.step >= state.total_steps or state.stop:
            self.save()

    def _finish(self) -> FitResult:
        state, partial = self.state, self.partial
        last_beta = state.betas[-1] if state.betas else 1.0
        # the final, partial epoch (if any): in the result, not in the checkpoint's history, and
        # validated on the parameters training ended with (before callbacks restore others)
        partial_val = self.validate() if partial["count"] and self.val_batches is not None else None
        for cb in self.callbacks:
            cb.on_fit_end(state)
        if not state.stop_reason:
            state.stop_reason = "completed"
        result = self.result()
        if partial["count"]:
            result.epoch_losses.append(partial["sum"] / partial["count"])
            result.epoch_betas.append(partial["beta_sum"] / partial["count"])
            if partial_val is not None:
                result.val_elbo.append(partial_val)
            result.partial_epoch = True
        warmup = self.warmup_cb
        done = state.progress
        if warmup is not None and last_beta < 1.0 and done < warmup.epochs:
            warnings.warn(
                f"the run ended {done:.3g} epochs into a {warmup.epochs:g}-epoch KL warm-up (KL weight "
                f"beta={last_beta:.3g} at the last step): its losses are the annealed objective "
                "-(E_q[log p(x | z)] - beta * KL), not the -ELBO (see FitResult.betas). Train "
                f"{warmup.epochs - done:.3g} more epochs (resume=True with more epochs), or pass a "
                "shorter kl_warmup= (kl_warmup=0 turns the warm-up off)",
                KLWarmupWarning, stacklevel=4,
            )
        return result

    def result(self) -> FitResult:
        state, compiled = self.state, self.compiled
        self.config["compiled"] = compiled is not None and compiled.active and bool(compiled.graphs)
        if compiled is not None:
            self.config["compile_mode"] = compiled.mode
            if not compiled.active:
                self.config["compile_fallback"] = compiled.fallback_reason
        return FitResult(
            model=self.model,
            program=self.program,
            losses=list(state.losses),
            epoch_losses=list(state.epoch_losses),
            val_elbo=list(state.val_elbo),
            wall_time=time.perf_counter() - self.started,
            config=self.config,
            steps=state.step,
            epochs=state.epoch,
            stop_reason=state.stop_reason,
            params=self.params,
            betas=list(state.betas),
            epoch_betas=list(state.epoch_betas),
            compile_time=compiled.compile_time if compiled is not None else 0.0,
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self) -> None:
        if self.ckpt_dir is None or not self.main_process:
            return
        state, program = self.state, self.program
        store = pyro.get_param_store()
        trained = {id(p) for p in self.param_list}
        extra_store = {n: store[n].detach() for n in store.keys() if id(store._params[n]) not in trained}
        save_checkpoint(
            checkpoint_path(self.ckpt_dir),
            {
                "module": program.module.state_dict() if program.module is not None else {},
                "params": {k: v.detach() for k, v in self.params.items()},
                "param_store": extra_store,
                "optimizer": self.opt.state_dict(),
                "rng": get_rng_state(),
                "shuffle_state": self.batches.shuffle_state(state.step % state.steps_per_epoch == 0),
                "counters": {"step": state.step, "epoch": state.epoch},
                "history": {
                    "losses": state.losses,
                    "epoch_losses": state.epoch_losses,
                    "val_elbo": state.val_elbo,
                    "betas": state.betas,
                    "epoch_betas": state.epoch_betas,
                    "partial": dict(self.partial),
                },
                "callbacks": {key: cb.state_dict() for key, cb in zip(self.keys, self.callbacks)},
                "config": self.config,
                "identity": self.identity,
            },
        )
        self.saved_at = state.step

    def restore(self, ckpt: dict, device) -> None:
        """Continue the run of ``ckpt``: refuse what may not change, then load every state."""
        differences = identity_differences(ckpt["identity"], self.identity)
        if differences:
            raise CheckpointError(
                f"cannot resume the run in {str(self.ckpt_dir)!r}: this call differs from it in what a "
                "resumed run may not change:\n  - " + "\n  - ".join(differences) + "\nResume with the "
                "model, data and settings that wrote the checkpoint (a resumed run may change "
                f"{', '.join(RESUMABLE_CHANGES)}), or start a new run in a new checkpoint_dir"
            )
        old, config, state, program = ckpt["config"], self.config, self.state, self.program
        if program.module is not None and ckpt["module"]:
            program.module.load_state_dict(ckpt["module"])
        with torch.no_grad():
            for k, v in ckpt["params"].items():
                self.params[k].copy_(v)
        for k, v in ckpt["param_store"].items():
            pyro.get_param_store()[k] = v.to(device)
        self.opt.load_state_dict(ckpt["optimizer"])
        changed = {k: [old.get(k), config[k]] for k in ("lr", "clip_norm") if old.get(k) != config[k]}
        if "lr" in changed:  # the new learning rate replaces the (possibly scheduled) one of the run
            for group in self.opt.param_groups:
                group["lr"] = config["lr"]
                if "initial_lr" in group:
                    group["initial_lr"] = config["lr"]
        set_rng_state(ckpt["rng"])
        self.batches.rewind_epoch(ckpt["shuffle_state"])
        state.step, state.epoch = ckpt["counters"]["step"], ckpt["counters"]["epoch"]
        history = ckpt["history"]
        state.losses = list(history["losses"])
        state.epoch_losses = list(history["epoch_losses"])
        state.val_elbo = list(history["val_elbo"])
        state.betas = list(history["betas"])
        state.epoch_betas = list(history["epoch_betas"])
        self.partial.update(history["partial"])
        saved = ckpt["callbacks"]
        for key, cb in zip(self.keys, self.callbacks):
            if key in saved:
                cb.load_state_dict(saved[key])
        config["resumed_from_step"] = state.step
        if changed:
            config["resume_changed"] = changed


def _is_real(value) -> bool:
    """A real number (Python or numpy scalar), not a bool."""
    real = isinstance(value, (int, float, np.integer, np.floating))
    return real and not isinstance(value, (bool, np.bool_))
