"""Callbacks for ``fit``: early stopping, convergence, learning-rate schedules, KL warm-up.

A callback sees the :class:`TrainState` at fixed points of the loop and may set
``state.stop``. Its ``state_dict``/``load_state_dict`` go into checkpoints, so a resumed run
continues with the same patience counters, schedules and best state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lvm_pyro.checks import check_int
from lvm_pyro.errors import ConfigurationError


@dataclass
class TrainState:
    """What the training loop knows, shared with callbacks.

    Losses are per data point (negative ELBO / N; the annealed objective while ``beta`` < 1);
    ``betas`` holds the KL weight of each step and ``epoch_betas`` its mean over each epoch;
    ``val_elbo`` is the held-out ELBO per data point after each epoch (empty without
    validation data).
    """

    num_data: int
    steps_per_epoch: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    params: dict[str, torch.Tensor]
    step: int = 0
    epoch: int = 0
    beta: float = 1.0
    losses: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epoch_betas: list[float] = field(default_factory=list)
    val_elbo: list[float] = field(default_factory=list)
    stop: bool = False
    stop_reason: str = ""

    @property
    def progress(self) -> float:
        """Training progress in epochs, fractional within an epoch."""
        return self.step / self.steps_per_epoch

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of every trained tensor (unconstrained), by name."""
        return {k: v.detach().clone() for k, v in self.params.items()}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Copy a :meth:`snapshot` back into the trained tensors, in place."""
        with torch.no_grad():
            for k, v in snapshot.items():
                self.params[k].copy_(v)


class Callback:
    """Base class: override the hooks you need. All hooks receive the TrainState.

    ``key`` names the callback's state in a checkpoint: a resumed run gives each callback
    the state saved under its key (default: its class name; two callbacks of one class are
    told apart by their order among themselves, or by distinct ``key`` attributes), so the
    order of the list may change between runs.
    """

    key: str | None = None

    @property
    def state_key(self) -> str:
        """The name of this callback's state in a checkpoint (``key``, else the class name)."""
        return self.key if self.key is not None else type(self).__qualname__

    def on_fit_start(self, state: TrainState) -> None: ...

    def on_step_start(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_fit_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class KLWarmup(Callback):
    """Linear KL annealing: beta = start + (1 - start) * min(1, epochs_done / epochs).

    The loss is -(E_q[log p(x | z)] - beta * KL(q || p)); beta reaches 1 after ``epochs``
    (fractional epochs count), which keeps a VAE's posterior from collapsing to the prior.

    Example:
        >>> KLWarmup(epochs=10).epochs
        10
    """

    def __init__(self, epochs: float, start: float = 0.0) -> None:
        if not _is_real(epochs) or not math.isfinite(epochs) or epochs <= 0:
            raise ConfigurationError(f"KLWarmup needs epochs > 0 (a finite number), got {epochs!r}")
        if not _is_real(start) or not 0.0 <= start <= 1.0:
            raise ConfigurationError(f"KLWarmup needs 0 <= start <= 1, got {start!r}")
        self.epochs = epochs
        self.start = start

    def on_step_start(self, state: TrainState) -> None:
        state.beta = self.start + (1.0 - self.start) * min(1.0, state.progress / self.epochs)

    def on_fit_end(self, state: TrainState) -> None:
        state.beta = 1.0


class KLWarmupWarning(UserWarning):
    """A run ended inside its KL warm-up: its losses are the annealed objective, not -ELBO."""


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class EarlyStopping(Callback):
    """Stop when the validation ELBO has not improved by ``min_delta`` for ``patience`` epochs.

    Monitors ``val_elbo`` (or the training ELBO, -epoch loss, without validation data). With
    ``restore_best`` the parameters of the best epoch are put back at the end.

    Example:
        >>> EarlyStopping(patience=5).patience
        5
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0, restore_best: bool = True) -> None:
        check_int(patience, "EarlyStopping patience", 1)
        if not _is_real(min_delta) or not min_delta >= 0 or not math.isfinite(min_delta):
            raise ConfigurationError(f"EarlyStopping needs min_delta >= 0 (finite), got {min_delta!r}")
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.best = -math.inf
        self.best_epoch = -1
        self.wait = 0
        self.best_state: dict[str, torch.Tensor] = {}

    def on_epoch_end(self, state: TrainState) -> None:
        value = state.val_elbo[-1] if state.val_elbo else -state.epoch_losses[-1]
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best:
                self.best_state = state.snapshot()
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.stop = True
            state.stop_reason = (
                f"early stopping: no improvement for {self.patience} epochs "
                f"(best ELBO {self.best:.4f} at epoch {self.best_epoch})"
            )

    def on_fit_end(self, state: TrainState) -> None:
        if self.restore_best and self.best_state:
            state.restore(self.best_state)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.best_state = state["wait"], state["best_state"]


class Convergence(Callback):
    """Stop when the epoch loss changes by less than ``rtol`` (relative) ``window`` times in a row.

    |L_t - L_{t-1}| <= rtol * |L_{t-1}| for ``window`` consecutive epochs.

    Example:
        >>> Convergence(rtol=1e-4).rtol
        0.0001
    """

    def __init__(self, rtol: float = 1e-4, window: int = 3) -> None:
        if not _is_real(rtol) or not rtol > 0 or not math.isfinite(rtol):
            raise ConfigurationError(f"Convergence needs rtol > 0 (finite), got {rtol!r}")
        check_int(window, "Convergence window", 1)
        self.rtol = rtol
        self.window = window
        self.count = 0

    def on_epoch_end(self, state: TrainState) -> None:
        if len(state.epoch_losses) < 2:
            return
        prev, cur = state.epoch_losses[-2], state.epoch_losses[-1]
        self.count = self.count + 1 if abs(cur - prev) <= self.rtol * abs(prev) else 0
        if self.count >= self.window:
            state.stop = True
            state.stop_reason = f"converged: relative loss change <= {self.rtol} for {self.window} epochs"

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


class LRScheduler(Callback):
    """Drive a torch learning-rate scheduler built by ``factory(optimizer)``.

    Stepped once per epoch (``interval="epoch"``) or per step; ReduceLROnPlateau is stepped
    with the epoch loss.

    Example:
        >>> sched = LRScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10, 0.5))
    """

    def __init__(self, factory: Callable, interval: str = "epoch") -> None:
        if not callable(factory):
            raise ConfigurationError(
                "LRScheduler needs a factory optimizer -> scheduler, e.g. "
                "LRScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10, 0.5))"
            )
        if interval not in ("epoch", "step"):
            raise ConfigurationError("LRScheduler interval must be 'epoch' or 'step'")
        self.factory = factory
        self.interval = interval
        self.scheduler = None
        self._pending: dict | None = None

    def on_fit_start(self, state: TrainState) -> None:
        self.scheduler = self.factory(state.optimizer)
        if self._pending is not None:
            self.scheduler.load_state_dict(self._pending)

    def _step(self, state: TrainState) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(state.epoch_losses[-1] if state.epoch_losses else state.losses[-1])
        else:
            self.scheduler.step()

    def on_step_end(self, state: TrainState) -> None:
        if self.interval == "step":
            self._step(state)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.interval == "epoch":
            self._step(state)

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state.get("scheduler")
