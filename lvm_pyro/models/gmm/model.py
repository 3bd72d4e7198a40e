"""Gaussian mixture: p(x) = sum_k w_k N(x; mu_k, Sigma_k), as a Pyro model/guide pair.

The Pyro program draws the global parameters (sites "mixture_weights", "locs", "precisions")
from their priors, then per data point ``z ~ Categorical(weights)`` (marked for enumeration)
and ``x ~ N(loc[z], precision[z]^-1)``. The guide is a point estimate (Delta) at the module's
parameters, so with z summed out ``TraceEnum_ELBO`` is exactly -log p(x) - log p(theta):
``fit(gmm, x, objective="enum")`` does gradient ascent on the marginal likelihood, the way
Pyro's GMM tutorial does, and ``em(gmm, x)`` runs expectation-maximization on the same
parameters. Without a prior (the default) the priors are flat and both give maximum
likelihood; with a :class:`~lvm_pyro.models.gmm.prior.GMMPrior` they give MAP estimates, and
NUTS or SVI over :meth:`GaussianMixtureModel.global_guide` give a posterior.

Besides the Pyro program, the model carries what EM needs in closed form (the statistics
protocol of ``em`` and ``online_em``): the log joint log p(x, z = k) as one matrix product
per chunk of rows (:meth:`~GaussianMixtureModel.log_joint`), expected sufficient statistics
accumulated over chunks (bounded memory, optional sample weights) and the M-step from them.
Those are tested equal to Pyro's enumeration of the program. Everything that depends on the
covariance type is one object of :mod:`lvm_pyro.models.gmm.covariance`.

The per-chunk operations are too small for torch's intra-op threads (a fork-join per
operation, very slow when a core is busy with other work), so they run single-threaded and
whole chunks are handed out in turn to as many threads as torch uses; the statistics are
summed in chunk order, so the result does not depend on the number of threads.

Missing values: NaN entries (missing at random) are marginalized exactly. Every closed-form
method (log_prob, posterior, log_joint, map_z, expected_statistics, hence ``em`` and the
estimator) sends the rows with a NaN to :mod:`lvm_pyro.models.gmm.missing` (conditioning on
the observed entries) and the complete rows through the fast path; the Pyro program itself
needs complete rows.

Canonical order (label switching): :meth:`~GaussianMixtureModel.canonicalize_` sorts the
components by decreasing weight, ties broken by increasing first mean coordinate; ``em``
and the estimator apply it at the end of fitting.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn import PyroParam, pyro_method
from torch.distributions import constraints

from lvm_pyro.errors import ConfigurationError, DataError, ModelContractError
from lvm_pyro.models.base import LatentVariableModel, check_latent_size
from lvm_pyro.models.gmm.covariance import COVARIANCE_TYPES, COVARIANCES, Covariance
from lvm_pyro.models.gmm.kmeans import as_generator, kmeans, kmeans_plusplus
from lvm_pyro.models.gmm.missing import (
    check_missing_data,
    expand_covariances,
    expected_statistics_missing,
    fill_missing_with_means,
    log_prob_missing,
    to_gmm_statistics,
    validate_missing_data,
)
from lvm_pyro.models.gmm.prior import GMMPrior, is_number
from lvm_pyro.models.gmm.statistics import (
    GROUP,
    Coefficients,
    GMMStatistics,
    Workspace,
    Workspaces,
    chunk_rows,
    log_sum_exp_columns_,
    softmax_columns_,
)
from lvm_pyro.threads import run_chunks, single_threaded

#: The global (per-dataset) sample sites of the Pyro program; "z" is the local discrete site.
GLOBAL_SITES = ("mixture_weights", "locs", "precisions")
INIT_METHODS = ("kmeans", "kmeans++", "k-means++", "random", "random_from_data")
_LOG_2PI = math.log(2 * math.pi)


def _check_covariance_type(covariance_type: str) -> Covariance:
    if covariance_type not in COVARIANCE_TYPES:
        raise ConfigurationError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )
    return COVARIANCES[covariance_type]


def check_sample_weight(sample_weight, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """scikit-learn's conventions: None, a number (the same weight for every row) or N
    finite non-negative weights, not all zero; returned as a (N,) tensor like ``like``.

    Example:
        >>> check_sample_weight([1, 2], 2, torch.zeros(1)).tolist()
        [1.0, 2.0]
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, bool):
        raise DataError(f"sample_weight must be numbers, got {sample_weight!r}")
    if is_number(sample_weight):
        w = like.new_full((n,), float(sample_weight))
    else:
        try:
            if torch.is_tensor(sample_weight):
                w = sample_weight.detach().to(dtype=like.dtype, device=like.device)
            else:
                w = torch.as_tensor(
                    np.asarray(sample_weight, dtype=np.float64), dtype=like.dtype, device=like.device
                )
        except (TypeError, ValueError) as exc:
            raise DataError(f"sample_weight must be an array of numbers: {exc}") from exc
    if w.dim() != 1 or len(w) != n:
        raise DataError(
            f"sample_weight has shape {tuple(w.shape)}, expected ({n},): one weight per row of the data"
        )
    if not bool(torch.isfinite(w).all()):
        raise DataError(f"sample_weight has {int((~torch.isfinite(w)).sum())} non-finite value(s)")
    if bool((w < 0).any()):
        first = int(torch.nonzero(w < 0)[0, 0])
        raise DataError(
            f"sample_weight has {int((w < 0).sum())} negative value(s) (first at index {first}): "
            "weights must be non-negative"
        )
    if not bool((w > 0).any()):
        raise DataError("sample_weight is zero for every row: at least one weight must be positive")
    return w


#: The last answer of :func:`_incomplete_rows`: (weak reference to the data, its version, mask).
_LAST_INCOMPLETE: list = [None, -1, None]


def _incomplete_rows(x: torch.Tensor) -> torch.Tensor | None:
    """The (N,) mask of rows with a NaN, or None when every row is complete. One pass over x,
    single-threaded (with intra-op threads its fork-join costs more than the pass), remembered
    for the last tensor seen until it is changed in place or freed: EM asks once an iteration
    about the same data (on N=1e6 x 16 the pass is ~17% of an iteration)."""
    ref, version, mask = _LAST_INCOMPLETE
    if ref is not None and ref() is x and version == x._version:
        return mask
    with single_threaded(x.device):
        incomplete = torch.isnan(x).any(1)
        mask = incomplete if bool(incomplete.any()) else None
    try:  # forgotten (the mask freed) when the data is
        _LAST_INCOMPLETE[:] = [weakref.ref(x, _forget_incomplete), x._version, mask]
    except TypeError:  # a tensor subclass without weak references: not remembered
        _forget_incomplete()
    return mask


def _forget_incomplete(_ref=None) -> None:
    _LAST_INCOMPLETE[:] = [None, -1, None]


def _refuse_missing(x: torch.Tensor) -> None:
    """The Pyro program needs complete rows (not checked while torch.compile traces)."""
    if not torch.compiler.is_compiling() and bool(torch.isnan(x).any()):
        raise DataError(
            "data has NaN entries (missing values): the Gaussian mixture marginalizes them in "
            "em's closed-form route (e_step='closed_form', the default), log_prob / posterior / "
            "map_z and GaussianMixture; the Pyro program (fit, e_step='enum', NUTS, the ArviZ "
            "export) needs complete rows"
        )


class GaussianMixtureModel(LatentVariableModel):
    """A mixture of K Gaussians in D dimensions: z ~ Categorical(w), x | z ~ N(mu_z, Sigma_z).

    Parameters (PyroParams, sklearn's shapes): ``weights`` (K,), ``loc`` (K, D) and the
    covariance factor ``scale_tril`` (K, D, D) lower Cholesky factor of Sigma_k (full),
    (D, D) (tied), or ``scale`` (K, D) standard deviations (diag), (K,) (spherical).

    Args:
        n_components: K.
        n_features: D.
        covariance_type: "full", "tied", "diag" or "spherical".
        reg_covar: added to the diagonal of every covariance estimate by the M-step.
        prior: a :class:`GMMPrior` for MAP / Bayesian estimates; None: flat (maximum likelihood).
        min_count: in ``em``, a component whose expected count falls below
            min(min_count, N / (2K)) is empty or collapsing onto a point, and is re-seeded.

    Example:
        >>> gmm = GaussianMixtureModel(2, 1, "diag")
        >>> gmm.set_parameters(weights=[0.5, 0.5], means=[[-2.0], [2.0]], covariances=[[1.0], [1.0]])
        >>> gmm.posterior(torch.tensor([[-2.0], [2.0]])).argmax(1).tolist()
        [0, 1]
    """

    data_support = "real"
    max_plate_nesting = 1
    #: NaN entries are missing values, marginalized by the closed-form methods
    missing_values = True

    def __init__(
        self,
        n_components: int,
        n_features: int,
        covariance_type: str = "full",
        *,
        reg_covar: float = 1e-6,
        prior: GMMPrior | None = None,
        min_count: float = 2.0,
    ) -> None:
        super().__init__()
        self.n_components = check_latent_size(n_components, "n_components")
        self.n_features = check_latent_size(n_features, "n_features")
        self._cov = _check_covariance_type(covariance_type)
        self.covariance_type = covariance_type
        if not (is_number(reg_covar) and reg_covar >= 0):
            raise ConfigurationError(f"reg_covar must be non-negative and finite, got {reg_covar!r}")
        if not (is_number(min_count) and min_count >= 0):
            raise ConfigurationError(f"min_count must be non-negative and finite, got {min_count!r}")
        if prior is not None and not isinstance(prior, GMMPrior):
            raise ConfigurationError(
                f"prior must be a GMMPrior (or None for maximum likelihood), got {type(prior).__name__}: "
                "pass prior=GMMPrior(weight_concentration=..., mean_scale=..., precision_df=...)"
            )
        self.reg_covar = float(reg_covar)
        self.prior = prior if prior is not None else GMMPrior()
        df = self.prior.precision_df
        if df is not None and self._cov.matrix and not df > n_features - 1:
            raise ConfigurationError(
                f"a Wishart prior in {n_features} dimensions needs precision_df > "
                f"{n_features - 1}, got {df}: raise GMMPrior.precision_df"
            )
        n_loc = len(self.prior.mean_loc) if isinstance(self.prior.mean_loc, (tuple, list)) else 1
        if n_loc not in (1, n_features):
            raise ConfigurationError(
                f"GMMPrior.mean_loc has {n_loc} values for {n_features} features: pass one "
                "number, or one per feature"
            )
        self.min_count = float(min_count)
        self.input_shape = (n_features,)
        K, D = n_components, n_features
        self.weights = PyroParam(torch.full((K,), 1.0 / K), constraints.simplex)
        self.loc = PyroParam(torch.zeros(K, D))
        setattr(self, self._cov.param, PyroParam(self._cov.initial_factor(K, D), self._cov.constraint()))

    def __repr__(self) -> str:
        loc = self.loc
        extras = [f"reg_covar={self.reg_covar:g}"]
        if self.prior != GMMPrior():
            extras.append(f"prior={self.prior}")
        if self.min_count != 2.0:
            extras.append(f"min_count={self.min_count:g}")
        where = f", dtype={str(loc.dtype).removeprefix('torch.')}"
        if loc.device.type != "cpu":
            where += f", device={loc.device}"
        return (
            f"{type(self).__name__}(n_components={self.n_components}, n_features={self.n_features}, "
            f"covariance_type={self.covariance_type!r}, {', '.join(extras)}{where})"
        )

    def check_fit_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Called by ``em`` on validated data: a constant feature (zero variance) is accepted
        with a warning, its variance being reg_covar. With NaN entries, rows with no observed
        entry and columns missing in every row are refused."""
        if _incomplete_rows(x) is not None:
            check_missing_data(x, name=name, fit=True)
            x = fill_missing_with_means(x)
        # a feature is constant when sum_n |x_n - x_0| is 0 (faster than torch.aminmax)
        chunks = x.split(chunk_rows(self.n_features, x.element_size()))
        spread = x.new_empty(len(chunks), self.n_features)

        def body(i: int, slot: int) -> None:
            torch.sum(torch.sub(chunks[i], x[0]).abs_(), 0, out=spread[i])

        with single_threaded(x.device) as threads:
            run_chunks(range(len(chunks)), body, threads)
            constant = torch.nonzero(spread.sum(0) == 0).flatten().tolist()
        if constant and len(x) > 1:
            warnings.warn(
                f"{name}: feature(s) {constant[:10]} are constant (zero variance); their variance "
                f"is regularized to reg_covar={self.reg_covar:g}: drop those features, or raise "
                "reg_covar",
                UserWarning,
                stacklevel=3,
            )

    # ----------------------------------------------------------------- parameters

    @property
    def _factor(self) -> torch.Tensor:
        """The covariance factor: ``scale_tril`` (full, tied) or ``scale`` (diag, spherical)."""
        return getattr(self, self._cov.param)

    @_factor.setter
    def _factor(self, value: torch.Tensor) -> None:
        setattr(self, self._cov.param, value)

    def covariances(self) -> torch.Tensor:
        """Covariances in sklearn's shapes: (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical."""
        return self._cov.covariances(self._factor)

    def precisions(self) -> torch.Tensor:
        """Precisions (inverse covariances) in sklearn's shapes."""
        return self._cov.precisions(self._factor)

    def precisions_cholesky(self) -> torch.Tensor:
        """P with P P^T = precision, as scikit-learn's ``precisions_cholesky_`` (upper
        triangular L^-T for full/tied, 1 / scale for diag/spherical)."""
        return self._cov.precisions_cholesky(self._factor)

    def set_parameters(
        self,
        *,
        weights=None,
        means=None,
        covariances=None,
        precisions=None,
    ) -> None:
        """Set any of the parameters from sklearn-shaped values (give covariances or precisions).

        Example:
            >>> gmm = GaussianMixtureModel(2, 2, "spherical")
            >>> gmm.set_parameters(precisions=[4.0, 1.0])
            >>> gmm.covariances().tolist()
            [0.25, 1.0]
        """
        like = self.loc.detach()
        K, D = self.n_components, self.n_features

        def tensor(value, shape, name):
            try:
                t = torch.as_tensor(
                    np.asarray(value, dtype=float) if not torch.is_tensor(value) else value,
                    dtype=like.dtype,
                    device=like.device,
                )
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ConfigurationError(f"{name} must be numbers of shape {shape}: {exc}") from exc
            if tuple(t.shape) != shape:
                raise ConfigurationError(
                    f"{name} has shape {tuple(t.shape)}, expected {shape} for "
                    f"{self.covariance_type} covariance with K={K}, D={D}"
                )
            if not bool(torch.isfinite(t).all()):
                raise ConfigurationError(f"{name} has non-finite values")
            return t

        if weights is not None:
            w = tensor(weights, (K,), "weights")
            if bool((w <= 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
                raise ConfigurationError(
                    "weights must be positive and sum to 1: normalize them with w / w.sum()"
                )
            self.weights = w / w.sum()
        if means is not None:
            self.loc = tensor(means, (K, D), "means")
        if covariances is not None and precisions is not None:
            raise ConfigurationError("pass covariances or precisions, not both")
        if covariances is None and precisions is None:
            return
        name = "covariances" if covariances is not None else "precisions"
        value = tensor(covariances if covariances is not None else precisions, self._covariance_shape(), name)
        self._factor = self._cov.factor_from(value, name)

    def _covariance_shape(self) -> tuple[int, ...]:
        """sklearn's shape of the covariances (and precisions) for this covariance type."""
        return self._cov.shape(self.n_components, self.n_features)

    def num_parameters(self) -> int:
        """Free parameters: K - 1 weights, K D means, and the covariance parameters.

        Example:
            >>> GaussianMixtureModel(3, 2, "full").num_parameters()
            17
        """
        K, D = self.n_components, self.n_features
        return K - 1 + K * D + self._cov.n_parameters(K, D)

    # ----------------------------------------------------------------- the Pyro program

    def _priors(self, like: torch.Tensor) -> dict[str, dist.Distribution]:
        K, D, p = self.n_components, self.n_features, self.prior
        if p.weight_concentration is None:
            weights = dist.ImproperUniform(constraints.simplex, (), (K,))
        else:
            weights = dist.Dirichlet(like.new_full((K,), p.weight_concentration))
        if p.mean_scale is None:
            loc = dist.ImproperUniform(constraints.real, (), (K, D))
        else:
            m0 = torch.as_tensor(p.mean_loc, dtype=like.dtype, device=like.device)
            loc = dist.Normal(m0.expand(K, D), p.mean_scale).to_event(2)
        precision = self._cov.precision_prior(p, like, K, D)
        return dict(zip(GLOBAL_SITES, (weights, loc, precision)))

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        """Sites "mixture_weights", "locs", "precisions" ~ prior; per point
        "z" ~ Cat(weights) (enumerated) and "x" ~ N(locs[z], precisions[z]^-1). Needs
        complete rows (NaN entries are marginalized by the closed-form methods only)."""
        _refuse_missing(x)
        priors = self._priors(x)
        weights, loc, precision = (pyro.sample(name, priors[name]) for name in GLOBAL_SITES)
        with self.data_plate(x):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", self._cov.component(loc, precision, z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """Point estimate of the global parameters; z is summed out by enumeration."""
        for name, value in self._global_values().items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    def global_guide(self, family: str = "normal") -> AutoNormal | AutoDelta:
        """An autoguide over the global sites only (z stays enumerated), for Bayesian SVI:
        ``fit(gmm.model, x, guide=gmm.global_guide(), objective="enum")``. For full and tied
        covariances the precision sites are mapped to unconstrained space by
        :class:`~lvm_pyro.models.transforms.CholeskyVectorToPositiveDefinite` (their support
        is :func:`~lvm_pyro.models.transforms.bijective_positive_definite`).

        family: "normal" (AutoNormal, a posterior approximation) or "delta" (AutoDelta, MAP).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "diag", prior=GMMPrior(1.0, 0.0, 10.0, 3.0))
            >>> type(gmm.global_guide()).__name__
            'AutoNormal'
        """
        if family not in ("normal", "delta"):
            raise ConfigurationError(f"family must be 'normal' or 'delta', got {family!r}")
        if not self.prior.is_proper:
            raise ConfigurationError(
                "a posterior over the global parameters needs proper priors: pass "
                "prior=GMMPrior(weight_concentration=..., mean_scale=..., precision_df=...)"
            )
        exposed = poutine.block(self.model, expose=list(GLOBAL_SITES))
        auto = AutoNormal if family == "normal" else AutoDelta
        return auto(exposed, init_loc_fn=self._init_globals)

    def _init_globals(self, site) -> torch.Tensor:
        return self._global_values()[site["name"]].detach()

    def _global_values(self) -> dict[str, torch.Tensor]:
        """The global sites' values at the current parameters."""
        return dict(zip(GLOBAL_SITES, (self.weights, self.loc, self.precisions())))

    @torch.no_grad()
    def pointwise_log_likelihood(self, samples: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """log p(x_n | theta_s) for posterior draws theta_s of the global sites, shape (S, N):
        the ``log_likelihood`` group of an ArviZ export (z summed out, which ArviZ's own
        vectorized trace cannot do for an enumerated model).

        ``samples`` maps "mixture_weights" (S, K), "locs" (S, K, D) and "precisions"
        (S, *sklearn precision shape) to draws, e.g. ``MCMC.get_samples()``.

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> draws = {"mixture_weights": torch.full((3, 2), 0.5), "locs": torch.zeros(3, 2, 1),
            ...          "precisions": torch.ones(3, 2)}
            >>> gmm.pointwise_log_likelihood(draws, torch.zeros(4, 1)).shape
            torch.Size([3, 4])
        """
        _refuse_missing(x)
        weights, locs, precisions = (samples[name] for name in GLOBAL_SITES)
        rows = []
        for w, loc, prec in zip(weights, locs, precisions):
            k = torch.arange(len(loc), device=x.device)
            component = self._cov.component(loc.to(x), prec.to(x), k)
            rows.append(torch.logsumexp(torch.log(w.to(x)) + component.log_prob(x.unsqueeze(-2)), -1))
        return torch.stack(rows)

    def log_prior(self) -> torch.Tensor:
        """log p(theta) at the current parameters (0 for flat priors)."""
        p = self.prior
        flat = (p.weight_concentration is None, p.mean_scale is None, p.precision_df is None)
        total = self.loc.new_zeros(())
        if all(flat):
            return total
        priors, values = self._priors(self.loc), self._global_values()
        for name, is_flat in zip(GLOBAL_SITES, flat):
            if not is_flat:
                total = total + priors[name].log_prob(values[name])
        return total

    # ----------------------------------------------------------------- closed forms

    def _coefficients(self, shift: torch.Tensor) -> Coefficients:
        """Coefficients of log p(x, z = k) as a linear function of the features of x - shift:
        log w_k - D/2 log 2 pi - 1/2 log det Sigma_k - 1/2 mu_k^T Lambda_k mu_k + A_k . phi."""
        mu = self.loc - shift
        A, lin, half_logdet, tied_factor = self._cov.coefficients(mu, self._factor)
        const = (
            torch.log(self.weights) - 0.5 * self.n_features * _LOG_2PI - half_logdet - 0.5 * (mu * lin).sum(1)
        )
        return Coefficients(shift, torch.cat([A, const[:, None]], 1).contiguous(), tied_factor)

    def _features(self, x: torch.Tensor, shift: torch.Tensor, out: torch.Tensor | None = None):
        """phi = [x', and x'_i x'_j (i <= j, triu_indices order) | x'^2 | |x'|^2, 1], x' = x -
        shift, shape (n, F + 1): the first D columns are x' for every covariance type, the last
        is 1 (it carries the constant term of the log density, and gives sum_n r_nk in the
        statistics' product). Written into ``out`` if given, whose last column must hold 1."""
        n, D = x.shape
        F = self._cov.n_phi(D)
        if out is None:
            phi = x.new_empty(n, F + 1)
            phi[:, F] = 1
        else:
            phi = out
        xs = torch.sub(x, shift, out=phi[:, :D])
        self._cov.write_second_order(xs, phi[:, D:F])
        return phi

    def _log_joint_chunk(self, x: torch.Tensor, coef: Coefficients, work: Workspace | None = None):
        """(features phi (n, F + 1), log p(x, z = k) transposed to (K, n) up to a per-row term,
        that per-row term (n,) or None). The (K, n) layout makes the reductions over k
        vectorized along the rows. With ``work``, phi and the (K, n) block are its buffers."""
        if work is None:
            phi = self._features(x, coef.shift)
            lj = coef.A @ phi.T
        else:
            phi = self._features(x, coef.shift, work.phi(len(x)))
            lj = torch.mm(coef.A, phi.T, out=work.block(len(x)))
        if coef.tied_factor is None:
            return phi, lj, None
        y = phi[:, : self.n_features] @ coef.tied_factor
        return phi, lj, -0.5 * torch.linalg.vecdot(y, y)

    def validate(self, x, name: str = "data") -> torch.Tensor:
        """As ``LatentVariableModel.validate``, with NaN entries kept (missing values). The
        checks' passes over the data run single-threaded (no fork-join per operation)."""
        with single_threaded(x.device if torch.is_tensor(x) else torch.device("cpu")):
            return validate_missing_data(x, name=name, event_shape=self.input_shape)

    def _rows(self, x, name: str = "x") -> torch.Tensor:
        """User data as (N, n_features) rows in the parameters' dtype and device, validated
        once; NaN entries (missing values) are kept."""
        with single_threaded(self.loc.device):
            return validate_missing_data(
                x, name=name, event_shape=(self.n_features,), dtype=self.loc.dtype, device=self.loc.device
            )

    def _missing_args(self):
        """(log w, mu, covariances) as :mod:`lvm_pyro.models.gmm.missing` takes them."""
        K, D = self.n_components, self.n_features
        cov = expand_covariances(self.covariances().detach(), self.covariance_type, K, D)
        return self.weights.detach().log(), self.loc.detach(), cov

    def _by_rows(self, x: torch.Tensor, chunk_size: int | None, reduce, missing) -> torch.Tensor:
        """reduce over the complete rows (the chunked fast path) and missing(MissingLogProb)
        over the rows with a NaN, put back in row order."""
        incomplete = _incomplete_rows(x)
        if incomplete is None:
            return self._per_chunk(x, chunk_size, reduce)
        with torch.no_grad():
            part = missing(log_prob_missing(x[incomplete], *self._missing_args()))
        out = part.new_empty((len(x), *part.shape[1:]))
        out[incomplete] = part
        if not bool(incomplete.all()):
            out[~incomplete] = self._per_chunk(x[~incomplete], chunk_size, reduce)
        return out

    def _n_columns(self) -> int:
        return self._cov.n_phi(self.n_features) + 1 + self.n_components

    def _chunks(self, x: torch.Tensor, chunk_size: int | None):
        return x.split(chunk_rows(self._n_columns(), x.element_size(), chunk_size))

    @torch.no_grad()
    def _per_chunk(self, x: torch.Tensor, chunk_size: int | None, reduce) -> torch.Tensor:
        """torch.cat of reduce(log p(x, z) chunk (K, n)) over the chunks; reduce may
        overwrite its argument but must not return a view of it."""
        shift = x.mean(0).to(self.loc.dtype)
        chunks = self._chunks(x, chunk_size)
        parts: list[torch.Tensor | None] = [None] * len(chunks)
        with single_threaded(x.device) as threads:
            coef = self._coefficients(shift)
            works = Workspaces(x, len(chunks[0]), coef.A.shape)

            def body(i: int, slot: int) -> None:
                _, lj, row = self._log_joint_chunk(chunks[i], coef, works[slot])
                parts[i] = reduce(lj if row is None else lj.add_(row))  # lj is (K, n)

            run_chunks(range(len(chunks)), body, threads)
            return torch.cat(parts)

    def log_joint(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """log p(x_n, z_n = k) = log w_k + log N(x_n; mu_k, Sigma_k), shape (N, K).

        Equal to the enumerated log density of the Pyro program (tested), computed as one
        matrix product per chunk of rows: x^T Lambda x - 2 x^T Lambda mu + mu^T Lambda mu.

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.log_joint(torch.zeros(3, 1)).shape
            torch.Size([3, 2])
        """
        return self._by_rows(self._rows(x), chunk_size, lambda lj: lj.T.clone(), lambda m: m.log_joint)

    def log_prob(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """log p(x_n) = logsumexp_k log p(x_n, z_n = k), shape (N,).

        Example:
            >>> gmm = GaussianMixtureModel(1, 1, "spherical")
            >>> round(float(gmm.log_prob(torch.zeros(1, 1))), 4)
            -0.9189
        """
        return self._by_rows(self._rows(x), chunk_size, log_sum_exp_columns_, lambda m: m.log_prob)

    def posterior(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Responsibilities r_nk = p(z_n = k | x_n) = w_k N(x_n; k) / sum_j w_j N(x_n; j), (N, K).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.posterior(torch.zeros(1, 1)).tolist()
            [[0.5, 0.5]]
        """
        return self._by_rows(
            self._rows(x), chunk_size, lambda lj: torch.softmax(lj, 0).T, lambda m: m.responsibilities
        )

    def map_z(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Hard clustering: argmax_k p(z_n = k | x_n), shape (N,).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.set_parameters(means=[[0.0], [5.0]])
            >>> gmm.map_z(torch.tensor([[4.0]])).tolist()
            [1]
        """
        return self._by_rows(
            self._rows(x), chunk_size, lambda lj: lj.argmax(0), lambda m: m.log_joint.argmax(1)
        )

    @torch.no_grad()
    def expected_statistics(
        self,
        x: torch.Tensor,
        shift: torch.Tensor | None = None,
        chunk_size: int | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, GMMStatistics]:
        """E-step: (sum_n w_n log p(x_n), expected sufficient statistics under r = p(z | x),
        each row weighted by w_n) with w_n = 1 when ``sample_weight`` is None.

        ``x`` is a (N, D) tensor in the model's dtype and device, ``shift`` a (D,) tensor
        (statistics are kept about it; zero when None), ``sample_weight`` N non-negative
        weights (integer weights equal replicated rows). Runs over chunks of rows; memory
        beyond x is O(chunk_size x (K + features)).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "diag")
            >>> ll, stats = gmm.expected_statistics(torch.zeros(4, 1))
            >>> stats.nk.tolist()
            [2.0, 2.0]
        """
        w = check_sample_weight(sample_weight, len(x), x)
        shift = self._shift(x, shift)
        incomplete = _incomplete_rows(x)
        if incomplete is not None:
            return self._expected_statistics_missing(x, shift, chunk_size, w, incomplete)
        with single_threaded(x.device) as threads:
            return self._expected_statistics(x, shift, chunk_size, threads, w)

    def _expected_statistics_missing(self, x, shift, chunk_size, w, incomplete):
        """Rows with a NaN by exact marginalization, the complete rows by the fast path; the
        statistics and log-likelihoods added."""
        part = expected_statistics_missing(
            x[incomplete], *self._missing_args(), None if w is None else w[incomplete], shift=shift
        )
        total, stats = part.log_likelihood, to_gmm_statistics(part, self.covariance_type)
        if not bool(incomplete.all()):
            complete = ~incomplete
            with single_threaded(x.device) as threads:
                ll, rest = self._expected_statistics(
                    x[complete], shift, chunk_size, threads, None if w is None else w[complete]
                )
            total, stats = total + ll, stats + rest
        return total, stats

    def _expected_statistics(self, x, shift, chunk_size, threads, w=None):
        coef = self._coefficients(shift)
        K, F1 = coef.A.shape
        D, F = self.n_features, F1 - 1
        tied = self._cov.pooled
        chunks = self._chunks(x, chunk_size)
        weights = None if w is None else w.split(len(chunks[0]))
        rows = len(chunks[0])
        # per chunk: S_k = sum_n w_n r_nk phi_n (the statistics, and sum_n w_n r_nk from phi's
        # column of ones), sum_n w_n log p(x_n) and for tied sum_n w_n x'_n x'_n^T; summed in
        # chunk order
        group = min(len(chunks), GROUP)
        parts = x.new_empty(group, K, F1)
        totals = x.new_empty(group, dtype=torch.float64)
        sxx_parts = x.new_empty(group, D, D) if tied else None
        S, total = x.new_zeros(K, F1), x.new_zeros((), dtype=torch.float64)
        sxx = x.new_zeros(D, D) if tied else None
        works = Workspaces(x, rows, (K, F1))
        # normalize the responsibilities through phi (n x (F + 1) products) when it is
        # narrower than the (K, n) block: its last column becomes 1 / norm, giving sum_n r_nk
        scale_phi = F1 < K

        def body(i: int, slot: int) -> None:
            work = works[slot]
            chunk, j = chunks[i], i % group
            phi, lj, row = self._log_joint_chunk(chunk, coef, work)  # lj: (K, n)
            top = work.top(len(chunk))
            inv = softmax_columns_(lj, top, work.norm(len(chunk)))
            # sum_n log p(x_n) = sum_n (top_n + log sum_k exp(lj_kn - top_n)) = sum_n (top_n - log inv_n)
            top.sub_(inv.log())
            if row is not None:
                top.add_(row)
            if weights is None:
                torch.sum(top, 0, dtype=torch.float64, out=totals[j])
            else:
                wi = weights[i]
                totals[j] = torch.dot(top.double(), wi.double())
                inv.mul_(wi)
            if row is not None:
                xs = phi[:, :D]
                rhs = xs if weights is None else xs * weights[i][:, None]
                torch.mm(xs.T, rhs, out=sxx_parts[j])
            if scale_phi:
                phi.mul_(inv[:, None])
                torch.mm(lj, phi, out=parts[j])
                phi[:, F] = 1
            else:
                torch.mm(lj.mul_(inv), phi, out=parts[j])

        for first in range(0, len(chunks), group):
            m = min(group, len(chunks) - first)
            run_chunks(range(first, first + m), body, threads)
            S += parts[:m].sum(0)
            total += totals[:m].sum()
            if tied:
                sxx += sxx_parts[:m].sum(0)
        return total, self._statistics_from_products(shift, S[:, F], S[:, :F].T, sxx)

    def _statistics_from_products(self, shift, nk, S, pooled) -> GMMStatistics:
        """Statistics from S = sum_n r_nk phi_n^T (F, K) (without the column of ones), n_k and,
        for tied, the pooled second moments."""
        D, K = self.n_features, self.n_components
        sx = S[:D].T
        sxx = self._cov.second_moments(S[D:], pooled, K, D)
        return GMMStatistics(shift, nk.contiguous(), sx.contiguous(), sxx.contiguous())

    def _shift(self, x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        return x.new_zeros(self.n_features) if shift is None else shift.to(x)

    @torch.no_grad()
    def sufficient_statistics(
        self,
        x: torch.Tensor,
        resp: torch.Tensor,
        shift: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> GMMStatistics:
        """Sufficient statistics for given responsibilities resp (N, K), each row weighted by
        ``sample_weight`` when given (see GMMStatistics).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.sufficient_statistics(torch.ones(3, 1), torch.tensor([[1.0, 0.0]] * 3)).nk.tolist()
            [3.0, 0.0]
        """
        shift = self._shift(x, shift)
        resp = resp.to(x)
        w = check_sample_weight(sample_weight, len(x), x)
        if w is not None:
            resp = resp * w[:, None]
        phi = self._features(x, shift)
        pooled = self._cov.responsibility_second_moments(phi[:, : self.n_features], resp)
        S = phi.T @ resp  # (F + 1, K); the last row is sum_n r_nk
        return self._statistics_from_products(shift, S[-1], S[:-1], pooled)

    def m_step(self, x: torch.Tensor, posterior: torch.Tensor | Mapping[str, torch.Tensor]) -> None:
        """Closed-form M-step from responsibilities: a (N, K) tensor, or a mapping with the
        posterior of site "z" (what ``em`` passes after Pyro's enumeration E-step)."""
        resp = posterior["z"] if isinstance(posterior, Mapping) else posterior
        if tuple(resp.shape) != (len(x), self.n_components):
            raise ModelContractError(
                f"the posterior of z has shape {tuple(resp.shape)}, expected (N, K) = "
                f"{(len(x), self.n_components)}"
            )
        self.m_step_from_statistics(self.sufficient_statistics(x, resp, x.mean(0)))

    @torch.no_grad()
    def m_step_from_statistics(self, stats: GMMStatistics) -> None:
        """M-step: the parameters maximizing E_r[log p(x, z | theta)] + log p(theta).

        Maximum likelihood (flat priors), as scikit-learn: n_k = sum_n r_nk + 10 eps,
        w_k = n_k / N, mu_k = sum_n r_nk x_n / n_k, Sigma_k = sum_n r_nk (x_n - mu_k)(x_n -
        mu_k)^T / n_k + reg_covar I (pooled for tied, diagonal for diag, averaged over
        features for spherical). With priors: w_k ~ n_k + alpha - 1; the means given the
        current precisions; then Sigma_k = (S_k + df s^2 I) / (n_k + df - D - 1) (Wishart) or
        (S_k + df s^2) / (n_k + df - 2) per variance (Gamma) (an ECM step: each part maximizes
        the objective given the others, so it never decreases).
        """
        with single_threaded(self.loc.device):
            self._m_step_from_statistics(stats)

    def _m_step_from_statistics(self, stats: GMMStatistics) -> None:
        p = self.prior
        nk_raw = stats.nk.to(self.loc)
        nk = nk_raw + 10 * torch.finfo(nk_raw.dtype).eps
        sx, sxx, shift = stats.sx.to(nk), stats.sxx.to(nk), stats.shift.to(nk)
        if p.weight_concentration is None:
            weights = nk / nk.sum()
        else:
            if p.weight_concentration < 1:
                raise ConfigurationError(
                    "a MAP estimate of the weights needs weight_concentration >= 1 (below 1 the "
                    "Dirichlet density has no interior maximum); raise it, or sample the "
                    "posterior with NUTS/SVI"
                )
            weights = nk + (p.weight_concentration - 1)
            weights = weights / weights.sum()
        mu = self._map_means(nk, sx, shift)
        scatter = self._cov.scatter(sxx, sx, mu, nk_raw)  # sum_n r_nk (x'_n - mu_k)(x'_n - mu_k)^T
        cov = self._cov.covariance(scatter, nk, p, self.n_features)
        factor = self._cov.factor_from_covariance(cov, self.reg_covar)
        self.weights = weights
        self.loc = mu + shift
        self._factor = factor

    def _map_means(self, nk: torch.Tensor, sx: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """mu' = sx / n_k, or with a Normal(m0, s0^2) prior the maximizer given the current
        precisions: (n_k Lambda_k + I / s0^2)^-1 (Lambda_k sx_k + (m0 - shift) / s0^2)."""
        p = self.prior
        if p.mean_scale is None:
            return sx / nk[:, None]
        m0 = torch.as_tensor(p.mean_loc, dtype=sx.dtype, device=sx.device).expand_as(sx) - shift
        return self._cov.map_means(nk, sx, self.precisions().detach().to(sx), p.mean_scale**-2, m0)

    # ----------------------------------------------------------------- EM support

    @torch.no_grad()
    def initialize_(
        self,
        x: torch.Tensor,
        method: str = "kmeans++",
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> None:
        """Initialize from data, as scikit-learn does: responsibilities from ``method``, then
        one M-step.

        "kmeans": one-hot labels of Lloyd's k-means (k-means++ seeded); "kmeans++" (or
        "k-means++"): one-hot at k-means++ seeds; "random_from_data": one-hot at K random
        points; "random": uniform random responsibilities. With one-hot seeds the
        covariances start at reg_covar, and the first E-step assigns points to the nearest
        seed. With ``sample_weight`` a row counts w_n times: k-means(++) is weighted, K
        random points are drawn with probability proportional to w_n, and the
        responsibilities of "kmeans" and "random" are weighted in the M-step (k-means++ and
        random_from_data seeds count once each, as without weights).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "diag")
            >>> gmm.initialize_(torch.tensor([[0.0], [0.1], [5.0], [5.1]]), "kmeans",
            ...                 torch.Generator().manual_seed(0))
            >>> sorted(round(m, 2) for m in gmm.loc[:, 0].tolist())
            [0.05, 5.05]
        """
        if method not in INIT_METHODS:
            raise ConfigurationError(f"init must be one of {INIT_METHODS}, got {method!r}")
        K = self.n_components
        if len(x) < K:
            raise DataError(
                f"n_components={K} is larger than the number of points ({len(x)}): "
                "use n_components <= n_samples, or more data"
            )
        self.to(dtype=x.dtype, device=x.device)
        if bool(torch.isnan(x).any()):  # seeds from mean-filled rows; EM then marginalizes
            x = fill_missing_with_means(x)
        w = check_sample_weight(sample_weight, len(x), x)
        shift = x.mean(0)
        if method == "random":
            gen = as_generator(generator)
            stats, start = None, 0
            for chunk in self._chunks(x, chunk_size):
                r = torch.rand(len(chunk), K, generator=gen, dtype=x.dtype).to(x.device)
                cw = None if w is None else w[start : start + len(chunk)]
                part = self.sufficient_statistics(chunk, r / r.sum(1, keepdim=True), shift, cw)
                stats = part if stats is None else stats + part
                start += len(chunk)
        else:
            rows, rw = x, w
            if method == "kmeans":
                labels = kmeans(x, K, generator=generator, chunk_size=chunk_size, sample_weight=w)[1]
            else:
                if method == "random_from_data":
                    gen = as_generator(generator)
                    if w is None:
                        seeds = torch.randperm(len(x), generator=gen)[:K]
                    else:
                        seeds = torch.multinomial(w.double().cpu(), K, replacement=False, generator=gen)
                else:
                    seeds = kmeans_plusplus(x, K, generator=generator, chunk_size=chunk_size, sample_weight=w)
                rows, rw, labels = x[seeds.to(x.device)], None, torch.arange(K, device=x.device)
            resp = torch.nn.functional.one_hot(labels, K).to(x.dtype)
            stats = self.sufficient_statistics(rows, resp, shift, rw)
        self.m_step_from_statistics(stats)

    def empty_components(self, stats: GMMStatistics) -> torch.Tensor:
        """Indices of the components whose expected count is below min(min_count, N / (2K))."""
        threshold = min(self.min_count, stats.n / (2 * self.n_components))
        return torch.nonzero(stats.nk < threshold).flatten()

    @torch.no_grad()
    def reseed_(
        self,
        x: torch.Tensor,
        stats: GMMStatistics,
        generator: torch.Generator | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> list[int]:
        """Re-seed empty or collapsing components; returns their indices.

        Each one is moved to a random data point (drawn with probability proportional to its
        weight when ``sample_weight`` is given), with the data's overall covariance and
        weight 1 / K (the weights are then renormalized).
        """
        empty = self.empty_components(stats)
        if len(empty) == 0:
            return []
        n = stats.nk.sum()
        mean = stats.sx.sum(0) / n
        cov = self._cov.pooled_covariance(stats.sxx, mean, n, self.n_features, self.reg_covar)
        gen = as_generator(generator)
        w = check_sample_weight(sample_weight, len(x), x)
        if w is None:
            idx = torch.randint(len(x), (len(empty),), generator=gen)
        else:
            idx = torch.multinomial(w.double().cpu(), len(empty), replacement=True, generator=gen)
        loc, weights = self.loc.detach().clone(), self.weights.detach().clone()
        rows = x[idx.to(x.device)]
        if bool(torch.isnan(rows).any()):  # missing entries of the new means: the data's mean
            rows = torch.where(torch.isnan(rows), (mean + stats.shift).to(rows), rows)
        loc[empty] = rows.to(loc)
        weights[empty] = 1.0 / self.n_components
        self.loc, self.weights = loc, weights / weights.sum()
        self._factor = self._cov.reseed(self._factor.detach(), empty, cov)
        return [int(k) for k in empty]

    @torch.no_grad()
    def canonicalize_(self) -> torch.Tensor:
        """Put the components in canonical order: decreasing weight, ties by increasing first
        mean coordinate. Returns the permutation applied (new k <- old perm[k]).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.set_parameters(weights=[0.3, 0.7])
            >>> gmm.canonicalize_().tolist()
            [1, 0]
        """
        by_mean = torch.argsort(self.loc[:, 0], stable=True)
        perm = by_mean[torch.argsort(-self.weights[by_mean], stable=True)]
        self.weights = self.weights[perm]
        self.loc = self.loc[perm]
        self._factor = self._cov.permute(self._factor, perm)
        return perm

    # ----------------------------------------------------------------- generation, criteria

    @torch.no_grad()
    def sample(
        self,
        n: int,
        component: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n points: z ~ Categorical(w) (or z = component), x = mu_z + L_z eps.
        Returns (x (n, D), z (n,)).

        Example:
            >>> x, z = GaussianMixtureModel(3, 2).sample(5, component=1)
            >>> x.shape, z.tolist()
            (torch.Size([5, 2]), [1, 1, 1, 1, 1])
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"the number of samples must be a positive integer, got {n!r}")
        K = self.n_components
        w, loc = self.weights, self.loc
        gen = as_generator(generator)
        if component is None:
            z = torch.multinomial(w.cpu().double(), n, replacement=True, generator=gen)
        else:
            if isinstance(component, bool) or not isinstance(component, int) or not 0 <= component < K:
                raise ConfigurationError(f"component must be an integer in [0, {K}), got {component!r}")
            z = torch.full((n,), component, dtype=torch.long)
        eps = torch.randn(n, self.n_features, generator=gen, dtype=loc.dtype).to(loc.device)
        z = z.to(loc.device)
        return loc[z] + self._cov.noise(self._factor, eps, z), z

    def bic(self, x: torch.Tensor, chunk_size: int | None = None) -> float:
        """Bayesian information criterion: -2 log p(x) + p log N (lower is better).

        Example:
            >>> gmm = GaussianMixtureModel(1, 1, "spherical")
            >>> round(gmm.bic(torch.zeros(10, 1)), 3)
            22.984
        """
        return -2 * self._total_log_prob(x, chunk_size) + self.num_parameters() * math.log(len(x))

    def aic(self, x: torch.Tensor, chunk_size: int | None = None) -> float:
        """Akaike information criterion: -2 log p(x) + 2 p (lower is better).

        Example:
            >>> round(GaussianMixtureModel(1, 1, "spherical").aic(torch.zeros(10, 1)), 3)
            22.379
        """
        return -2 * self._total_log_prob(x, chunk_size) + 2 * self.num_parameters()

    def _total_log_prob(self, x: torch.Tensor, chunk_size: int | None) -> float:
        return float(self.log_prob(x, chunk_size).sum(dtype=torch.float64))


__all__ = ["GLOBAL_SITES", "INIT_METHODS", "GaussianMixtureModel", "check_sample_weight"]
