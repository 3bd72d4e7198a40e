"""Online EM (Cappe and Moulines, 2009): stochastic approximation on running sufficient
statistics, for data that does not fit in memory.

For any model with closed-form EM (the statistics protocol: ``expected_statistics(x,
shift=None, chunk_size=None, sample_weight=None)`` returning ``(sum_n w_n log p(x_n),
stats)`` or ``stats``, statistics supporting ``a + b`` and ``float * stats``, and
``m_step_from_statistics(stats)``), each minibatch B_t updates the per-point average
statistics and then the parameters:

    s_t = (1 - gamma_t) s_{t-1} + gamma_t (1 / |B_t|) sum_{n in B_t} E[s(x_n, z_n) | x_n; theta_{t-1}]
    theta_t = M(N s_t),    gamma_t = (t + t0)^-kappa,  kappa in (0.5, 1]  (gamma_1 = 1)

(|B_t| and N count sample weights when given; N is the data size when known, else the
weight seen so far, and only matters with priors.) With ``averaging`` the estimate
returned is a Polyak-Ruppert average over the steps after ``average_after``: of the
statistics (``"statistics"``, then one M-step; the default) or of the model's parameters in
their unconstrained space (``"parameters"``).

A model with ``missing_values = True`` (the Gaussian mixture) receives batches with their NaN
entries (missing values) kept; other models' batches are refused if they hold NaN.

Data: a tensor or numpy array (a ``np.load(path, mmap_mode="r")`` memmap included), a path to
a ``.npy`` file (memory-mapped), a ``torch.utils.data.DataLoader`` or any iterable of
(B, D) batches (tensors, arrays, or tuples whose first element is the batch). Memory is
bounded by the batch: an array is read one batch of rows at a time; a ``.npy`` file is never
loaded whole. Indexable data is read in contiguous batches whose order is shuffled every pass
(``shuffle=True``); rows within a batch keep their file order, so data sorted by class should
be shuffled once beforehand.

:class:`OnlineEM` holds the running state and takes one step per minibatch (what
``GaussianMixture.partial_fit`` uses); :func:`online_em` drives it over passes of a data
source.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lvm_pyro.data import validate_data
from lvm_pyro.errors import ConfigurationError, DataError, DivergenceError, ModelContractError
from lvm_pyro.models.gmm.missing import validate_missing_data
from lvm_pyro.threads import single_threaded

AVERAGING = ("statistics", "parameters", None)


def _check_protocol(model) -> None:
    if not (hasattr(model, "expected_statistics") and hasattr(model, "m_step_from_statistics")):
        raise ModelContractError(
            f"online EM needs a model with expected_statistics(x, shift, chunk_size, "
            f"sample_weight) and m_step_from_statistics(stats); {type(model).__name__} has "
            "not both: use fit(...) with minibatches (SVI) for this model"
        )


@dataclass
class OnlineEMState:
    """What one step reports: the step count t, its step size, the mean log-likelihood of the
    batch under theta_{t-1} (a running, slightly optimistic-for-early-steps estimate of the
    per-point log-likelihood), the rows and weight seen so far."""

    step: int
    gamma: float
    batch_log_likelihood: float
    n_seen: int
    weight_seen: float


class OnlineEM:
    """The running state of online EM over one model; :meth:`OnlineEM.step` takes one minibatch.

    Args:
        model: a model with the statistics protocol (e.g. ``GaussianMixtureModel``), already
            initialized (``model.initialize_(first_batch, "kmeans")`` for the mixture).
        kappa: step-size exponent in (0.5, 1].
        t0: step-size offset >= 0 (gamma_t = (t + t0)^-kappa for t >= 2; gamma_1 = 1).
        averaging: "statistics", "parameters" or None.
        average_after: steps before the averaging starts (the burn-in).
        n_total: the data's (weighted) size N, scaling the statistics given to the M-step;
            None: the weight seen so far.
        shift: the (D,) point the statistics are kept about; None: the first batch's mean.
        chunk_size: rows per E-step chunk inside a batch (None: automatic).

    Example:
        >>> from lvm_pyro.models.gmm import GaussianMixtureModel
        >>> x = torch.cat([torch.randn(500, 1) - 4, torch.randn(500, 1) + 4])[torch.randperm(1000)]
        >>> gmm = GaussianMixtureModel(2, 1, "diag")
        >>> gmm.initialize_(x[:100], "kmeans", torch.Generator().manual_seed(0))
        >>> state = OnlineEM(gmm, average_after=5)
        >>> for batch in x.split(100):
        ...     _ = state.step(batch)
        >>> state.finalize()
        >>> sorted(round(m) for m in gmm.loc[:, 0].tolist())
        [-4, 4]
    """

    def __init__(
        self,
        model,
        *,
        kappa: float = 0.6,
        t0: float = 0.0,
        averaging: str | None = "statistics",
        average_after: int = 0,
        n_total: float | None = None,
        shift: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> None:
        _check_protocol(model)
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0.5 < kappa <= 1:
            raise ConfigurationError(f"kappa must be in (0.5, 1] (Cappe-Moulines step sizes), got {kappa!r}")
        if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0 <= t0 < math.inf:
            raise ConfigurationError(f"t0 must be a finite number >= 0, got {t0!r}")
        if averaging not in AVERAGING:
            raise ConfigurationError(f"averaging must be one of {AVERAGING}, got {averaging!r}")
        if isinstance(average_after, bool) or not isinstance(average_after, int) or average_after < 0:
            raise ConfigurationError(f"average_after must be an integer >= 0, got {average_after!r}")
        if n_total is not None and not (isinstance(n_total, (int, float)) and n_total > 0):
            raise ConfigurationError(f"n_total must be a positive number or None, got {n_total!r}")
        self.model, self.kappa, self.t0 = model, float(kappa), float(t0)
        self.averaging, self.average_after = averaging, average_after
        self.n_total, self.shift, self.chunk_size = n_total, shift, chunk_size
        self.t = 0
        self.n_seen = 0
        self.weight_seen = 0.0
        self.stats = None  # s_t, per point
        self._sum = None  # sum of the averaged quantity over the averaged steps
        self._n_averaged = 0
        self._current: dict[str, torch.Tensor] | None = None  # theta_t while the average is shown

    def gamma(self, t: int) -> float:
        """gamma_t = (t + t0)^-kappa, with gamma_1 = 1 (the first batch starts the recursion)."""
        return 1.0 if t <= 1 else (t + self.t0) ** -self.kappa

    @torch.no_grad()
    def step(self, x: torch.Tensor, sample_weight: torch.Tensor | None = None) -> OnlineEMState:
        """One stochastic-approximation step on the minibatch x (a (B, D) tensor in the
        model's dtype and device; validated by the caller)."""
        self._restore_current()
        if self.shift is None:
            self.shift = x.nanmean(0)
        out = self.model.expected_statistics(x, self.shift, self.chunk_size, sample_weight)
        total, batch = out if isinstance(out, tuple) else (None, out)
        if total is not None and not math.isfinite(float(total)):
            raise DivergenceError(
                f"the log-likelihood of minibatch {self.t + 1} is {float(total)}: the parameters "
                "left the data's support or underflowed; use float64 data, a better start, or "
                "a larger batch_size"
            )
        weight = float(len(x)) if sample_weight is None else float(sample_weight.sum())
        if weight <= 0:
            raise DataError("a minibatch has total sample weight 0: every row's weight is zero")
        self.t += 1
        gamma = self.gamma(self.t)
        batch = (1.0 / weight) * batch
        self.stats = batch if self.stats is None else (1.0 - gamma) * self.stats + gamma * batch
        self.n_seen += len(x)
        self.weight_seen += weight
        self.model.m_step_from_statistics(self._scale() * self.stats)
        if self.averaging is not None and self.t > self.average_after:
            current = self.stats if self.averaging == "statistics" else self._parameters()
            if self._sum is None:
                self._sum = current
            elif self.averaging == "statistics":
                self._sum = self._sum + current
            else:
                self._sum = {k: self._sum[k] + v for k, v in current.items()}
            self._n_averaged += 1
        ll = math.nan if total is None else float(total) / weight
        return OnlineEMState(self.t, gamma, ll, self.n_seen, self.weight_seen)

    def _scale(self) -> float:
        return float(self.n_total) if self.n_total is not None else self.weight_seen

    def _parameters(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def finalize(self) -> None:
        """Put the estimate into the model: the average (with averaging, once it has started),
        else theta_t. Further steps continue from theta_t."""
        self._restore_current()
        if self.averaging is None or self._n_averaged == 0:
            return
        self._current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.averaging == "statistics":
            self.model.m_step_from_statistics((self._scale() / self._n_averaged) * self._sum)
        else:
            averaged = {k: v / self._n_averaged for k, v in self._sum.items()}
            self.model.load_state_dict({**self.model.state_dict(), **averaged})

    def _restore_current(self) -> None:
        if self._current is not None:
            self.model.load_state_dict(self._current)
            self._current = None


@dataclass
class OnlineEMResult:
    """What :func:`online_em` returns. ``pass_log_likelihood[p]``: the mean over pass p of
    the batches' log-likelihoods, each under the parameters before its step (a running
    estimate of the per-point log-likelihood; evaluate the final model on held-out data for
    an exact figure). ``converged``: the last pass changed that mean by less than ``tol``."""

    model: object
    n_steps: int
    n_passes: int
    n_seen: int
    pass_log_likelihood: list[float]
    converged: bool
    wall_time: float
    pass_times: list[float] = field(default_factory=list)


def _load(data):
    """A path to .npy -> its memmap; anything else unchanged."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not path.endswith(".npy"):
            raise DataError(f"{path}: online EM reads a .npy file (memory-mapped); convert it with np.save")
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file")
        return np.load(path, mmap_mode="r")
    return data


def _indexable(data) -> bool:
    return isinstance(data, (torch.Tensor, np.ndarray))


def _batches(data, batch_size: int, weights, rng: np.random.Generator | None) -> Iterator[tuple]:
    """(rows, weights or None) per minibatch, for one pass."""
    if _indexable(data):
        n = len(data)
        starts = np.arange(0, n, batch_size)
        if rng is not None:
            rng.shuffle(starts)
        for s in starts:
            w = None if weights is None else weights[s : s + batch_size]
            yield data[s : s + batch_size], w
        return
    for batch in data:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield batch, None


def _as_rows(batch, dtype, device, n_features: int | None, name: str, missing: bool = False,
             any_shape: bool = False) -> torch.Tensor:
    """A batch as validated (B, D) rows (NaN kept when the model marginalizes missing values);
    rows of any shape for a model that takes them (``any_event_shape``: a user's HMM takes (B, T)
    or (B, T, D) sequences, a user's mixture (B,) points).
    Validation runs on this thread alone: a batch is too small for torch's intra-op threads,
    whose fork-join per operation costs more than the check itself on a busy machine."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.array(batch))  # a copy: read from a memmap, writable
    event_shape = None if n_features is None else (n_features,)
    if any_shape:
        event_shape = tuple(np.shape(batch)[1:])
    check = validate_missing_data if missing else validate_data
    with single_threaded(torch.device(device)):
        return check(batch, name=name, event_shape=event_shape, dtype=dtype, device=device)


def online_em(
    model,
    data,
    *,
    batch_size: int = 131072,
    max_passes: int = 3,
    kappa: float = 0.6,
    t0: float = 0.0,
    averaging: str | None = "statistics",
    average_after: int | None = None,
    sample_weight=None,
    init: str | Callable | None = "kmeans",
    tol: float = 0.0,
    shuffle: bool = True,
    seed: int | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    callbacks: Iterable[Callable[[OnlineEMState], None]] = (),
) -> OnlineEMResult:
    """Online EM over passes of ``data`` in minibatches (see the module docstring for the
    update): s_t = (1 - gamma_t) s_{t-1} + gamma_t s(B_t; theta_{t-1}), theta_t = M(s_t).

    Args:
        model: a model with the statistics protocol (e.g. ``GaussianMixtureModel``).
        data: a tensor, a numpy array or memmap, a path to a ``.npy`` file, a DataLoader or
            an iterable of (B, D) batches. A one-shot iterator (a generator) gives one pass.
        batch_size: rows per step for tensors, arrays and files (a DataLoader's own batches
            are used as they come).
        max_passes: passes over the data (epochs).
        kappa, t0: step sizes gamma_t = (t + t0)^-kappa, kappa in (0.5, 1].
        averaging: "statistics" (default), "parameters" or None (the last iterate).
        average_after: steps of burn-in before averaging; None: the first pass (all steps of
            a one-pass stream after its first half are not known in advance, so for iterables
            without a length: 0).
        sample_weight: N non-negative weights aligned with an indexable ``data`` (an array or
            memmap of its own), read batch by batch.
        init: "kmeans", "kmeans++", "random_from_data", "random" (the model's ``initialize_``
            on the first batch), a callable ``init(model, first_batch, generator)``, or
            None / "current" (keep the model's parameters).
        tol: stop when a pass's mean batch log-likelihood changed by less than tol.
        shuffle: shuffle the order of the contiguous batches every pass (indexable data).
        seed: seeds the initialization and the batch order.
        chunk_size: rows per E-step chunk inside a batch.
        dtype, device: of the computation (default: the model's).
        callbacks: called with an :class:`OnlineEMState` after every step.

    Example:
        >>> from lvm_pyro.models.gmm import GaussianMixtureModel
        >>> x = torch.cat([torch.randn(2000, 2) - 3, torch.randn(2000, 2) + 3])
        >>> result = online_em(GaussianMixtureModel(2, 2, "diag"), x, batch_size=500, seed=0)
        >>> result.n_passes, sorted(round(m) for m in result.model.loc[:, 0].tolist())
        (3, [-3, 3])
    """
    _check_protocol(model)
    for name, value, low in (("batch_size", batch_size, 1), ("max_passes", max_passes, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigurationError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise ConfigurationError(f"tol must be a finite number >= 0, got {tol!r}")
    data = _load(data)
    any_shape = bool(getattr(model, "any_event_shape", False))
    keep_dtype = any_shape and dtype is None  # a user's model: each batch keeps its floating dtype
    like = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dtype = dtype or (like.dtype if like is not None else torch.get_default_dtype())
    device = device if device is not None else (like.device if like is not None else "cpu")
    if hasattr(model, "to"):
        model.to(dtype=dtype, device=device)
    n_features = getattr(model, "n_features", None)
    missing = bool(getattr(model, "missing_values", False))
    indexable = _indexable(data)
    weights = None
    if sample_weight is not None:
        if not indexable:
            raise ConfigurationError(
                "sample_weight needs indexable data (a tensor, array, memmap or .npy path); for a "
                "DataLoader or stream, weight the rows in the model's statistics yourself"
            )
        weights = _load(sample_weight)
        if len(weights) != len(data):
            raise DataError(f"sample_weight has {len(weights)} entries for {len(data)} rows: one per row")
    n_total = None
    if indexable:
        n_total = float(len(data)) if weights is None else float(np.asarray(weights, dtype=np.float64).sum())
    steps_per_pass = (
        math.ceil(len(data) / batch_size) if indexable else (len(data) if hasattr(data, "__len__") else None)
    )
    if average_after is None:
        average_after = steps_per_pass if steps_per_pass is not None and max_passes > 1 else 0
    one_shot = not indexable and iter(data) is data
    rng = np.random.default_rng(seed) if shuffle and indexable else None
    gen = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**62)))
    state = OnlineEM(
        model,
        kappa=kappa,
        t0=t0,
        averaging=averaging,
        average_after=average_after,
        n_total=n_total,
        chunk_size=chunk_size,
    )
    callbacks = tuple(callbacks)
    pass_ll: list[float] = []
    pass_times: list[float] = []
    converged = False
    start = time.perf_counter()
    for p in range(max_passes):
        t_pass = time.perf_counter()
        total, weight = 0.0, 0.0
        for i, (batch, w) in enumerate(_batches(data, batch_size, weights, rng)):
            name = f"data batch {i} of pass {p}"
            x = _as_rows(batch, None if keep_dtype else dtype, device, n_features, name, missing, any_shape)
            wt = (
                None
                if w is None
                else torch.as_tensor(np.asarray(w, dtype=np.float64)).to(dtype=dtype, device=device)
            )
            if state.t == 0:
                _initialize(model, x, init, gen, chunk_size, wt)
            report = state.step(x, wt)
            total += report.batch_log_likelihood * (len(x) if wt is None else float(wt.sum()))
            weight += len(x) if wt is None else float(wt.sum())
            for callback in callbacks:
                callback(report)
        pass_times.append(time.perf_counter() - t_pass)
        if weight == 0:
            raise DataError("the data gave no rows: pass a non-empty source")
        pass_ll.append(total / weight)
        if len(pass_ll) > 1 and abs(pass_ll[-1] - pass_ll[-2]) < tol:
            converged = True
            break
        if one_shot:
            break
    state.finalize()
    return OnlineEMResult(
        model,
        state.t,
        len(pass_ll),
        state.n_seen,
        pass_ll,
        converged,
        time.perf_counter() - start,
        pass_times,
    )


def _initialize(model, x, init, gen, chunk_size, weight) -> None:
    if init in (None, "current"):
        return
    if callable(init):
        init(model, x, gen)
        return
    if not hasattr(model, "initialize_"):
        raise ConfigurationError(
            f"init={init!r} needs a model with an initialize_(x, method, generator) method; "
            "initialize the model yourself and pass init='current'"
        )
    model.initialize_(x, init, gen, chunk_size, sample_weight=weight)


__all__ = ["AVERAGING", "OnlineEM", "OnlineEMResult", "OnlineEMState", "online_em"]
