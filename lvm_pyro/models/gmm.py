"""Gaussian mixture: p(x) = sum_k w_k N(x; mu_k, Sigma_k), as a Pyro model/guide pair.

The Pyro program draws the global parameters (sites "mixture_weights", "locs", "precisions")
from their priors,
then per data point ``z ~ Categorical(weights)`` (marked for enumeration) and
``x ~ N(loc[z], precision[z]^-1)``. The guide is a point estimate (Delta) at the module's
parameters, so with z summed out ``TraceEnum_ELBO`` is exactly -log p(x) - log p(theta):
``fit(gmm, x, estimator="enum")`` does gradient ascent on the marginal likelihood, the way
Pyro's GMM tutorial does, and ``em(gmm, x)`` runs expectation-maximization on the same
parameters. Without a prior (the default) the priors are flat and both give maximum
likelihood; with a :class:`GMMPrior` they give MAP estimates, and NUTS or SVI over
:meth:`GaussianMixtureModel.global_guide` give a posterior.

Besides the Pyro program, the model carries what EM needs in closed form: the log joint
log p(x, z = k) as one matrix product per chunk of rows (:meth:`~GaussianMixtureModel.log_joint`),
expected sufficient statistics accumulated over chunks (bounded memory) and the M-step from
them. Those are tested equal to Pyro's enumeration of the program.

Covariance types follow scikit-learn: ``full`` (one D x D matrix per component), ``tied``
(one shared matrix), ``diag`` (one variance per component and feature), ``spherical`` (one
variance per component).

Numerics: the closed-form E-step expands (x - mu)^T Lambda (x - mu) into products with the
features [x, x x^T] of x shifted by the data mean, so it costs one matrix product per chunk
and never forms an N x K x D block. The rounding of that expansion is about eps (|x - mean| /
sigma)^2 relative: negligible in float64 (scikit-learn's precision, the default of the
estimator); in float32 (eps ~ 1e-7, faster) it matters only for clusters hundreds of standard
deviations from the data mean. Responsibilities below exp(log(tiny) / 2) are rounded up to
that value so no subnormal numbers slow the CPU.

Speed on a CPU: a chunk's buffers (about 2 MiB) stay in cache across its passes; phi carries
a column of ones, so the constant term rides in the first matrix product and sum_n r_nk in
the second. The per-chunk operations are too small for torch's intra-op threads (a fork-join
per operation, very slow when a core is busy with other work), so they run single-threaded
and whole chunks are handed out in turn to as many threads as torch uses; the statistics are
summed in chunk order, so the result does not depend on the number of threads.

Canonical order (label switching): :meth:`~GaussianMixtureModel.canonicalize_` sorts the
components by decreasing weight, ties broken by increasing first mean coordinate; ``em``
and the estimator apply it at the end of fitting.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn import PyroParam, pyro_method
from torch.distributions import constraints

from lvm_pyro.data import validate_data
from lvm_pyro.errors import ConfigurationError, DataError, ModelContractError
from lvm_pyro.models.base import LatentVariableModel, check_latent_size
from lvm_pyro.models.registry import register_model
from lvm_pyro.threads import run_chunks, single_threaded

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
#: The global (per-dataset) sample sites of the Pyro program; "z" is the local discrete site.
GLOBAL_SITES = ("mixture_weights", "locs", "precisions")
INIT_METHODS = ("kmeans", "kmeans++", "k-means++", "random", "random_from_data")
_LOG_2PI = math.log(2 * math.pi)
_CHUNK_BYTES = 2**21
_ILL_DEFINED = (
    "{name} are not all positive-definite; for fitted covariances this means some components "
    "have ill-defined empirical covariance (a singleton or collapsed sample): increase "
    "reg_covar, decrease n_components, or scale the input data"
)


def _is_number(value, low: float | None = None) -> bool:
    """A finite real number (not a bool), above ``low`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and (low is None or value > low)


def _check_covariance_type(covariance_type: str) -> str:
    if covariance_type not in COVARIANCE_TYPES:
        raise ConfigurationError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )
    return covariance_type


def chunk_rows(n_columns: int, itemsize: int, chunk_size: int | None = None) -> int:
    """Rows per chunk so that a (rows x n_columns) block stays about 2 MiB: large enough that
    per-operation overheads (Python, dispatch) stay small, small enough that a chunk's buffers
    stay in a core's cache across the passes over them (measured best at 1-2 MiB).

    Example:
        >>> chunk_rows(32, 8)
        8192
    """
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return chunk_size
    return int(min(65536, max(1024, _CHUNK_BYTES // (itemsize * max(n_columns, 1)))))


@dataclass(frozen=True)
class GMMPrior:
    """Priors on the global parameters; None leaves that parameter's prior flat.

    weights ~ Dirichlet(weight_concentration * 1_K);
    loc[k] ~ Normal(mean_loc, mean_scale^2 I), mean_loc one number or one per feature;
    precision ~ Wishart(precision_df, I / (precision_df * covariance_scale^2)) per component
    (full) or shared (tied), and each precision ~ Gamma(precision_df / 2,
    precision_df * covariance_scale^2 / 2) (diag, spherical): E[precision] = 1 /
    covariance_scale^2 either way.

    EM with a prior returns the MAP estimate (weights need weight_concentration >= 1 for an
    interior maximum); NUTS and SVI need every prior set.

    Example:
        >>> GMMPrior(weight_concentration=2.0, mean_scale=10.0).mean_scale
        10.0
    """

    weight_concentration: float | None = None
    mean_loc: float | tuple[float, ...] = 0.0
    mean_scale: float | None = None
    precision_df: float | None = None
    covariance_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("weight_concentration", "mean_scale", "precision_df"):
            value = getattr(self, name)
            if value is not None and not _is_number(value, low=0.0):
                raise ConfigurationError(
                    f"GMMPrior.{name} must be a finite positive number or None, got {value!r}"
                )
        if not _is_number(self.covariance_scale, low=0.0):
            raise ConfigurationError(
                f"GMMPrior.covariance_scale must be a finite positive number, got {self.covariance_scale!r}"
            )
        locs = self.mean_loc if isinstance(self.mean_loc, (tuple, list)) else (self.mean_loc,)
        if not locs or not all(_is_number(v) for v in locs):
            raise ConfigurationError(
                f"GMMPrior.mean_loc must be a finite number or a tuple of them (one per feature), "
                f"got {self.mean_loc!r}"
            )

    @property
    def is_proper(self) -> bool:
        """True when every global parameter has a proper prior (needed by NUTS and SVI)."""
        return None not in (self.weight_concentration, self.mean_scale, self.precision_df)


@dataclass
class GMMStatistics:
    """Expected sufficient statistics of a Gaussian mixture, additive over chunks of data.

    With r_nk = p(z_n = k | x_n) and x' = x - shift: ``nk`` = sum_n r_nk, ``sx`` = sum_n
    r_nk x'_n (K, D), ``sxx`` = sum_n r_nk x'_n x'_n^T (K, D, D) for full, its diagonal (K, D)
    for diag, sum_n r_nk |x'_n|^2 (K,) for spherical and sum_n x'_n x'_n^T (D, D) for tied.
    Shifting by the data mean keeps the expanded second moments accurate.
    """

    shift: torch.Tensor
    nk: torch.Tensor
    sx: torch.Tensor
    sxx: torch.Tensor

    def __add__(self, other: GMMStatistics) -> GMMStatistics:
        return GMMStatistics(self.shift, self.nk + other.nk, self.sx + other.sx, self.sxx + other.sxx)

    @property
    def n(self) -> float:
        return float(self.nk.sum())


@dataclass(frozen=True)
class _Coefficients:
    """log p(x, z = k) = A_k . phi(x') (+ a per-row term for tied), x' = x - shift, with
    phi's last feature 1 so that A's last column (A is (K, F + 1)) is the constant term."""

    shift: torch.Tensor
    A: torch.Tensor
    tied_factor: torch.Tensor | None


class _Workspace:
    """Buffers reused over the chunks of rows: phi (rows, F + 1) whose last column holds 1,
    the (K, rows) block and two row vectors. The views for a chunk of n <= rows rows are
    contiguous."""

    def __init__(self, x: torch.Tensor, rows: int, shape: tuple[int, int]) -> None:
        self.K, F1 = shape
        self._phi = x.new_empty(rows, F1)
        self._phi[:, -1] = 1
        self._block = x.new_empty(self.K * rows)
        self._vectors = x.new_empty(2, rows)

    def phi(self, n: int) -> torch.Tensor:
        return self._phi[:n]

    def block(self, n: int) -> torch.Tensor:
        return self._block[: self.K * n].view(self.K, n)

    def top(self, n: int) -> torch.Tensor:
        return self._vectors[0, :n]

    def norm(self, n: int) -> torch.Tensor:
        return self._vectors[1, :n]


class _Workspaces(dict):
    """One :class:`_Workspace` per thread slot of :func:`run_chunks`, made on first use."""

    def __init__(self, x: torch.Tensor, rows: int, shape: tuple[int, int]) -> None:
        super().__init__()
        self._args = (x, rows, shape)

    def __missing__(self, slot: int) -> _Workspace:
        work = self[slot] = _Workspace(*self._args)
        return work


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
        self.covariance_type = _check_covariance_type(covariance_type)
        if not (_is_number(reg_covar) and reg_covar >= 0):
            raise ConfigurationError(f"reg_covar must be non-negative and finite, got {reg_covar!r}")
        if not (_is_number(min_count) and min_count >= 0):
            raise ConfigurationError(f"min_count must be non-negative and finite, got {min_count!r}")
        if prior is not None and not isinstance(prior, GMMPrior):
            raise ConfigurationError(
                f"prior must be a GMMPrior (or None for maximum likelihood), got {type(prior).__name__}: "
                "pass prior=GMMPrior(weight_concentration=..., mean_scale=..., precision_df=...)"
            )
        self.reg_covar = float(reg_covar)
        self.prior = prior if prior is not None else GMMPrior()
        df = self.prior.precision_df
        if df is not None and covariance_type in ("full", "tied") and not df > n_features - 1:
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
        if covariance_type == "full":
            self.scale_tril = PyroParam(torch.eye(D).expand(K, D, D).clone(), constraints.lower_cholesky)
        elif covariance_type == "tied":
            self.scale_tril = PyroParam(torch.eye(D), constraints.lower_cholesky)
        else:
            shape = (K, D) if covariance_type == "diag" else (K,)
            self.scale = PyroParam(torch.ones(shape), constraints.positive)

    def check_fit_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Called by ``em`` on validated data: a constant feature (zero variance) is accepted
        with a warning, its variance being reg_covar."""
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
    def _full_cov(self) -> bool:
        return self.covariance_type in ("full", "tied")

    def covariances(self) -> torch.Tensor:
        """Covariances in sklearn's shapes: (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical."""
        if self._full_cov:
            L = self.scale_tril
            return L @ L.mT
        return self.scale**2

    def precisions(self) -> torch.Tensor:
        """Precisions (inverse covariances) in sklearn's shapes."""
        if self._full_cov:
            return torch.cholesky_inverse(self.scale_tril)
        return self.scale**-2

    def precisions_cholesky(self) -> torch.Tensor:
        """P with P P^T = precision, as scikit-learn's ``precisions_cholesky_`` (upper
        triangular L^-T for full/tied, 1 / scale for diag/spherical)."""
        if self._full_cov:
            L = self.scale_tril
            eye = torch.eye(self.n_features, dtype=L.dtype, device=L.device).expand_as(L)
            return torch.linalg.solve_triangular(L, eye, upper=False).mT
        return 1.0 / self.scale

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
                t = torch.as_tensor(np.asarray(value, dtype=float) if not torch.is_tensor(value) else value,
                                    dtype=like.dtype, device=like.device)
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
        shape = self._covariance_shape()
        name = "covariances" if covariances is not None else "precisions"
        value = tensor(covariances if covariances is not None else precisions, shape, name)
        if self._full_cov:
            if covariances is None:
                value = torch.cholesky_inverse(self._cholesky(value, "precisions"))
            self.scale_tril = self._cholesky(value, name)
        else:
            if bool((value <= 0).any()):
                raise ConfigurationError(f"{name} must be positive")
            self.scale = value.sqrt() if covariances is not None else value.rsqrt()

    def _covariance_shape(self) -> tuple[int, ...]:
        """sklearn's shape of the covariances (and precisions) for this covariance type."""
        K, D = self.n_components, self.n_features
        return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[self.covariance_type]

    @staticmethod
    def _cholesky(matrix: torch.Tensor, name: str) -> torch.Tensor:
        L, info = torch.linalg.cholesky_ex(matrix)
        if bool((info != 0).any()):
            raise ConfigurationError(_ILL_DEFINED.format(name=name))
        return L

    def num_parameters(self) -> int:
        """Free parameters: K - 1 weights, K D means, and the covariance parameters.

        Example:
            >>> GaussianMixtureModel(3, 2, "full").num_parameters()
            17
        """
        K, D = self.n_components, self.n_features
        cov = {
            "full": K * D * (D + 1) // 2,
            "tied": D * (D + 1) // 2,
            "diag": K * D,
            "spherical": K,
        }[self.covariance_type]
        return K - 1 + K * D + cov

    # ----------------------------------------------------------------- the Pyro program

    def _priors(self, like: torch.Tensor) -> dict[str, dist.Distribution]:
        K, D, p = self.n_components, self.n_features, self.prior
        prec_shape = self._covariance_shape()
        if p.weight_concentration is None:
            weights = dist.ImproperUniform(constraints.simplex, (), (K,))
        else:
            weights = dist.Dirichlet(like.new_full((K,), p.weight_concentration))
        if p.mean_scale is None:
            loc = dist.ImproperUniform(constraints.real, (), (K, D))
        else:
            m0 = torch.as_tensor(p.mean_loc, dtype=like.dtype, device=like.device)
            loc = dist.Normal(m0.expand(K, D), p.mean_scale).to_event(2)
        if p.precision_df is None:
            support = constraints.positive_definite if self._full_cov else constraints.positive
            n_event = 2 if self._full_cov else 0
            batch, event = prec_shape[: len(prec_shape) - n_event], prec_shape[len(prec_shape) - n_event :]
            precision = dist.ImproperUniform(support, batch, event)
            if batch:
                precision = precision.to_event(len(batch))
        elif self._full_cov:
            df = like.new_tensor(p.precision_df)
            tril = torch.eye(D, dtype=like.dtype, device=like.device) / math.sqrt(
                p.precision_df * p.covariance_scale**2
            )
            precision = dist.Wishart(df, scale_tril=tril)
            if self.covariance_type == "full":
                precision = precision.expand((K,)).to_event(1)
        else:
            a = like.new_full(prec_shape, p.precision_df / 2)
            b = like.new_full(prec_shape, p.precision_df * p.covariance_scale**2 / 2)
            precision = dist.Gamma(a, b).to_event(len(prec_shape))
        return dict(zip(GLOBAL_SITES, (weights, loc, precision)))

    def _component(self, loc: torch.Tensor, precision: torch.Tensor, z: torch.Tensor):
        if self.covariance_type == "full":
            return dist.MultivariateNormal(loc[z], precision_matrix=precision[z])
        if self.covariance_type == "tied":
            return dist.MultivariateNormal(loc[z], precision_matrix=precision)
        scale = precision.rsqrt()[z]
        if self.covariance_type == "spherical":
            scale = scale.unsqueeze(-1)
        return dist.Normal(loc[z], scale).to_event(1)

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        """Sites "mixture_weights", "locs", "precisions" ~ prior; per point
        "z" ~ Cat(weights) (enumerated) and "x" ~ N(locs[z], precisions[z]^-1)."""
        priors = self._priors(x)
        weights, loc, precision = (pyro.sample(name, priors[name]) for name in GLOBAL_SITES)
        with self.data_plate(x):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", self._component(loc, precision, z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """Point estimate of the global parameters; z is summed out by enumeration."""
        for name, value in self._global_values().items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    def global_guide(self, family: str = "normal") -> AutoNormal | AutoDelta:
        """An autoguide over the global sites only (z stays enumerated), for Bayesian SVI:
        ``fit(gmm.model, x, guide=gmm.global_guide(), estimator="enum")``.

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
        weights, locs, precisions = (samples[name] for name in GLOBAL_SITES)
        rows = []
        for w, loc, prec in zip(weights, locs, precisions):
            component = self._component(loc.to(x), prec.to(x), torch.arange(len(loc), device=x.device))
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

    def _coefficients(self, shift: torch.Tensor) -> _Coefficients:
        """Coefficients of log p(x, z = k) as a linear function of the features of x - shift."""
        mu = self.loc - shift
        logw = torch.log(self.weights)
        D = self.n_features
        base = logw - 0.5 * D * _LOG_2PI
        tied_factor = None
        if self._full_cov:
            L = self.scale_tril
            prec = torch.cholesky_inverse(L)
            half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
            if self.covariance_type == "full":
                lin = (prec @ mu.unsqueeze(-1)).squeeze(-1)
                # x^T Lambda x over the upper triangle: Lambda_ii x_i^2 + 2 Lambda_ij x_i x_j
                rows, cols = torch.triu_indices(D, D, device=prec.device)
                quad = torch.where(rows == cols, -0.5, -1.0).to(prec) * prec[:, rows, cols]
                A = torch.cat([lin, quad], 1)
            else:
                lin = mu @ prec
                A = lin
                eye = torch.eye(D, dtype=L.dtype, device=L.device)
                tied_factor = torch.linalg.solve_triangular(L, eye, upper=False).T
            const = base - half_logdet - 0.5 * (mu * lin).sum(1)
        elif self.covariance_type == "diag":
            prec = self.scale**-2
            lin = mu * prec
            A = torch.cat([lin, -0.5 * prec], 1)
            const = base - torch.log(self.scale).sum(1) - 0.5 * (mu * lin).sum(1)
        else:
            prec = self.scale**-2
            lin = mu * prec[:, None]
            A = torch.cat([lin, -0.5 * prec[:, None]], 1)
            const = base - D * torch.log(self.scale) - 0.5 * (mu * lin).sum(1)
        return _Coefficients(shift, torch.cat([A, const[:, None]], 1).contiguous(), tied_factor)

    def _n_features_phi(self) -> int:
        D = self.n_features
        return {"full": D + D * (D + 1) // 2, "tied": D, "diag": 2 * D, "spherical": D + 1}[
            self.covariance_type
        ]

    def _features(self, x: torch.Tensor, shift: torch.Tensor, out: torch.Tensor | None = None):
        """phi = [x', and x'_i x'_j (i <= j, triu_indices order) | x'^2 | |x'|^2, 1], x' = x -
        shift, shape (n, F + 1): the first D columns are x' for every covariance type, the last
        is 1 (it carries the constant term of the log density, and gives sum_n r_nk in the
        statistics' product). Written into ``out`` if given, whose last column must hold 1."""
        n, D = x.shape
        F = self._n_features_phi()
        if out is None:
            phi = x.new_empty(n, F + 1)
            phi[:, F] = 1
        else:
            phi = out
        xs = torch.sub(x, shift, out=phi[:, :D])
        if self.covariance_type == "full":
            start = D
            for i in range(D):
                torch.mul(xs[:, i:], xs[:, i : i + 1], out=phi[:, start : start + D - i])
                start += D - i
        elif self.covariance_type == "diag":
            torch.mul(xs, xs, out=phi[:, D:F])
        elif self.covariance_type == "spherical":
            torch.linalg.vecdot(xs, xs, out=phi[:, D])
        return phi

    def _log_joint_chunk(self, x: torch.Tensor, coef: _Coefficients, work: _Workspace | None = None):
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

    def _rows(self, x, name: str = "x") -> torch.Tensor:
        """User data as (N, n_features) rows in the parameters' dtype and device, validated once."""
        return validate_data(x, name=name, event_shape=(self.n_features,), dtype=self.loc.dtype,
                             device=self.loc.device)

    def _n_columns(self) -> int:
        return self._n_features_phi() + 1 + self.n_components

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
            works = _Workspaces(x, len(chunks[0]), coef.A.shape)

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
        return self._per_chunk(self._rows(x), chunk_size, lambda lj: lj.T.clone())

    def log_prob(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """log p(x_n) = logsumexp_k log p(x_n, z_n = k), shape (N,).

        Example:
            >>> gmm = GaussianMixtureModel(1, 1, "spherical")
            >>> round(float(gmm.log_prob(torch.zeros(1, 1))), 4)
            -0.9189
        """
        return self._per_chunk(self._rows(x), chunk_size, _log_sum_exp_columns_)

    def posterior(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Responsibilities r_nk = p(z_n = k | x_n) = w_k N(x_n; k) / sum_j w_j N(x_n; j), (N, K).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.posterior(torch.zeros(1, 1)).tolist()
            [[0.5, 0.5]]
        """
        return self._per_chunk(self._rows(x), chunk_size, lambda lj: torch.softmax(lj, 0).T)

    def map_z(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Hard clustering: argmax_k p(z_n = k | x_n), shape (N,).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.set_parameters(means=[[0.0], [5.0]])
            >>> gmm.map_z(torch.tensor([[4.0]])).tolist()
            [1]
        """
        return self._per_chunk(self._rows(x), chunk_size, lambda lj: lj.argmax(0))

    @torch.no_grad()
    def expected_statistics(
        self,
        x: torch.Tensor,
        shift: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> tuple[torch.Tensor, GMMStatistics]:
        """E-step: (sum_n log p(x_n), expected sufficient statistics under r = p(z | x)).

        Runs over chunks of rows; memory beyond x is O(chunk_size x (K + features)).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "diag")
            >>> ll, stats = gmm.expected_statistics(torch.zeros(4, 1))
            >>> stats.nk.tolist()
            [2.0, 2.0]
        """
        with single_threaded(x.device) as threads:
            return self._expected_statistics(x, self._shift(x, shift), chunk_size, threads)

    def _expected_statistics(self, x, shift, chunk_size, threads):
        coef = self._coefficients(shift)
        K, F1 = coef.A.shape
        D, F = self.n_features, F1 - 1
        tied = self.covariance_type == "tied"
        chunks = self._chunks(x, chunk_size)
        rows = len(chunks[0])
        # per chunk: S_k = sum_n r_nk phi_n (the statistics, and sum_n r_nk from phi's column
        # of ones), sum_n log p(x_n) and for tied sum_n x'_n x'_n^T; summed in chunk order
        group = min(len(chunks), _GROUP)
        parts = x.new_empty(group, K, F1)
        totals = x.new_empty(group, dtype=torch.float64)
        sxx_parts = x.new_empty(group, D, D) if tied else None
        S, total = x.new_zeros(K, F1), x.new_zeros((), dtype=torch.float64)
        sxx = x.new_zeros(D, D) if tied else None
        works = _Workspaces(x, rows, (K, F1))
        # normalize the responsibilities through phi (n x (F + 1) products) when it is
        # narrower than the (K, n) block: its last column becomes 1 / norm, giving sum_n r_nk
        scale_phi = F1 < K

        def body(i: int, slot: int) -> None:
            work = works[slot]
            chunk, j = chunks[i], i % group
            phi, lj, row = self._log_joint_chunk(chunk, coef, work)  # lj: (K, n)
            top = work.top(len(chunk))
            inv = _softmax_columns_(lj, top, work.norm(len(chunk)))
            # sum_n log p(x_n) = sum_n (top_n + log sum_k exp(lj_kn - top_n)) = sum_n (top_n - log inv_n)
            top.sub_(inv.log())
            if row is not None:
                top.add_(row)
                xs = phi[:, :D]
                torch.mm(xs.T, xs, out=sxx_parts[j])
            torch.sum(top, 0, dtype=torch.float64, out=totals[j])
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

    def _statistics_from_products(self, shift, nk, S, sxx) -> GMMStatistics:
        D, K = self.n_features, self.n_components
        sx = S[:D].T
        if self.covariance_type == "full":
            rows, cols = torch.triu_indices(D, D, device=S.device)
            upper = S.new_zeros(K, D, D)
            upper[:, rows, cols] = S[D:].T
            sxx = upper + upper.mT - torch.diag_embed(torch.diagonal(upper, dim1=-2, dim2=-1))
        elif self.covariance_type == "diag":
            sxx = S[D:].T
        elif self.covariance_type == "spherical":
            sxx = S[D]
        return GMMStatistics(shift, nk.contiguous(), sx.contiguous(), sxx.contiguous())

    def _shift(self, x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        return x.new_zeros(self.n_features) if shift is None else shift.to(x)

    @torch.no_grad()
    def sufficient_statistics(
        self, x: torch.Tensor, resp: torch.Tensor, shift: torch.Tensor | None = None
    ) -> GMMStatistics:
        """Sufficient statistics for given responsibilities resp (N, K) (see GMMStatistics).

        Example:
            >>> gmm = GaussianMixtureModel(2, 1, "spherical")
            >>> gmm.sufficient_statistics(torch.ones(3, 1), torch.tensor([[1.0, 0.0]] * 3)).nk.tolist()
            [3.0, 0.0]
        """
        shift = self._shift(x, shift)
        phi = self._features(x, shift)
        xs = phi[:, : self.n_features]
        sxx = xs.T @ xs if self.covariance_type == "tied" else None
        S = phi.T @ resp.to(x)  # (F + 1, K); the last row is sum_n r_nk
        return self._statistics_from_products(shift, S[-1], S[:-1], sxx)

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
        p, D, cov_type = self.prior, self.n_features, self.covariance_type
        nk_raw = stats.nk.to(self.loc)
        dtype = nk_raw.dtype
        nk = nk_raw + 10 * torch.finfo(dtype).eps
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
        # scatter about mu: sum_n r_nk (x'_n - mu_k)(x'_n - mu_k)^T
        if cov_type == "full":
            outer = sx.unsqueeze(2) * mu.unsqueeze(1)
            scatter = sxx - outer - outer.mT + nk_raw[:, None, None] * mu.unsqueeze(2) * mu.unsqueeze(1)
        elif cov_type == "tied":
            outer = sx.T @ mu
            scatter = sxx - outer - outer.T + (nk_raw[:, None] * mu).T @ mu
        elif cov_type == "diag":
            scatter = sxx - 2 * sx * mu + nk_raw[:, None] * mu * mu
        else:  # spherical: the scatter per feature, averaged over the D features
            scatter = (sxx - 2 * (sx * mu).sum(1) + nk_raw * (mu * mu).sum(1)) / D
        if p.precision_df is None:
            if cov_type == "full":
                cov = scatter / nk[:, None, None]
            elif cov_type == "tied":
                cov = scatter / nk.sum()
            else:
                cov = scatter / (nk[:, None] if cov_type == "diag" else nk)
        else:
            df, s2 = p.precision_df, p.covariance_scale**2
            eye = torch.eye(D, dtype=dtype, device=nk.device)
            if cov_type == "full":
                cov = (scatter + df * s2 * eye) / (nk + df - D - 1)[:, None, None]
            elif cov_type == "tied":
                cov = (scatter + df * s2 * eye) / (nk.sum() + df - D - 1)
            elif cov_type == "diag":
                cov = (scatter + df * s2) / (nk + df - 2)[:, None]
            else:
                cov = (D * scatter + df * s2) / (D * nk + df - 2)
        if self._full_cov:
            scale_tril = self._regularized_cholesky(0.5 * (cov + cov.mT))
        else:
            # rounding can leave a zero scatter (a single point) slightly negative
            cov = cov.clamp_min(0) + self.reg_covar
            if bool((cov <= 0).any()):
                raise ConfigurationError(_ILL_DEFINED.format(name="covariances"))
            scale_tril = cov.sqrt()
        self.weights = weights
        self.loc = mu + shift
        if self._full_cov:
            self.scale_tril = scale_tril
        else:
            self.scale = scale_tril

    def _regularized_cholesky(self, cov: torch.Tensor) -> torch.Tensor:
        """Cholesky factor of cov + reg_covar I. Where rounding left cov slightly indefinite
        (a zero scatter computed as a difference of second moments), its negative
        eigenvalues are first set to zero."""
        eye = torch.eye(self.n_features, dtype=cov.dtype, device=cov.device)
        L, info = torch.linalg.cholesky_ex(cov + self.reg_covar * eye)
        if bool((info != 0).any()):
            evals, evecs = torch.linalg.eigh(cov)
            cov = (evecs * evals.clamp_min(0).unsqueeze(-2)) @ evecs.mT
            L = self._cholesky(cov + self.reg_covar * eye, "covariances")
        return L

    def _map_means(self, nk: torch.Tensor, sx: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """mu' = sx / n_k, or with a Normal(m0, s0^2) prior the maximizer given the current
        precisions: (n_k Lambda_k + I / s0^2)^-1 (Lambda_k sx_k + (m0 - shift) / s0^2)."""
        p = self.prior
        if p.mean_scale is None:
            return sx / nk[:, None]
        tau = p.mean_scale**-2
        m0 = torch.as_tensor(p.mean_loc, dtype=sx.dtype, device=sx.device).expand_as(sx) - shift
        prec = self.precisions().detach().to(sx)
        if self._full_cov:
            prec = prec.expand(self.n_components, self.n_features, self.n_features)
            eye = torch.eye(self.n_features, dtype=sx.dtype, device=sx.device)
            lhs = nk[:, None, None] * prec + tau * eye
            rhs = (prec @ sx.unsqueeze(-1)).squeeze(-1) + tau * m0
            return torch.linalg.solve(lhs, rhs)
        if self.covariance_type == "spherical":
            prec = prec[:, None]
        return (prec * sx + tau * m0) / (nk[:, None] * prec + tau)

    # ----------------------------------------------------------------- EM support

    @torch.no_grad()
    def initialize_(
        self,
        x: torch.Tensor,
        method: str = "kmeans++",
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """Initialize from data, as scikit-learn does: responsibilities from ``method``, then
        one M-step.

        "kmeans": one-hot labels of Lloyd's k-means (k-means++ seeded); "kmeans++" (or
        "k-means++"): one-hot at k-means++ seeds; "random_from_data": one-hot at K random
        points; "random": uniform random responsibilities. With one-hot seeds the
        covariances start at reg_covar, and the first E-step assigns points to the nearest
        seed.

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
        shift = x.mean(0)
        if method == "random":
            gen = _generator(generator)
            stats = None
            for chunk in self._chunks(x, chunk_size):
                r = torch.rand(len(chunk), K, generator=gen, dtype=x.dtype).to(x.device)
                part = self.sufficient_statistics(chunk, r / r.sum(1, keepdim=True), shift)
                stats = part if stats is None else stats + part
        else:
            if method == "kmeans":
                labels = kmeans(x, K, generator=generator, chunk_size=chunk_size)[1]
                seeds = None
            elif method == "random_from_data":
                seeds = torch.randperm(len(x), generator=_generator(generator))[:K].to(x.device)
            else:
                seeds = kmeans_plusplus(x, K, generator=generator, chunk_size=chunk_size)
            if seeds is not None:
                rows, labels = x[seeds], torch.arange(K, device=x.device)
            else:
                rows = x
            resp = torch.nn.functional.one_hot(labels, K).to(x.dtype)
            stats = self.sufficient_statistics(rows, resp, shift)
        self.m_step_from_statistics(stats)

    def empty_components(self, stats: GMMStatistics) -> torch.Tensor:
        """Indices of the components whose expected count is below min(min_count, N / (2K))."""
        threshold = min(self.min_count, stats.n / (2 * self.n_components))
        return torch.nonzero(stats.nk < threshold).flatten()

    @torch.no_grad()
    def reseed_(
        self, x: torch.Tensor, stats: GMMStatistics, generator: torch.Generator | None = None
    ) -> list[int]:
        """Re-seed empty or collapsing components; returns their indices.

        Each one is moved to a random data point, with the data's overall covariance and
        weight 1 / K (the weights are then renormalized).
        """
        empty = self.empty_components(stats)
        if len(empty) == 0:
            return []
        n = stats.nk.sum()
        sx = stats.sx.sum(0)
        mean = sx / n
        if self.covariance_type in ("full", "tied"):
            total = stats.sxx if self.covariance_type == "tied" else stats.sxx.sum(0)
            cov = total / n - mean[:, None] * mean[None, :]
            cov = cov + self.reg_covar * torch.eye(self.n_features, dtype=cov.dtype, device=cov.device)
        elif self.covariance_type == "diag":
            cov = stats.sxx.sum(0) / n - mean**2 + self.reg_covar
        else:
            cov = (stats.sxx.sum() / n - (mean**2).sum()) / self.n_features + self.reg_covar
        idx = torch.randint(len(x), (len(empty),), generator=_generator(generator)).to(x.device)
        loc, weights = self.loc.detach().clone(), self.weights.detach().clone()
        loc[empty] = x[idx].to(loc)
        weights[empty] = 1.0 / self.n_components
        self.loc, self.weights = loc, weights / weights.sum()
        if self.covariance_type == "full":
            tril = self.scale_tril.detach().clone()
            tril[empty] = self._cholesky(cov.to(tril), "covariances")
            self.scale_tril = tril
        elif self.covariance_type != "tied":
            scale = self.scale.detach().clone()
            scale[empty] = cov.clamp_min(torch.finfo(cov.dtype).tiny).sqrt().to(scale)
            self.scale = scale
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
        if self.covariance_type == "full":
            self.scale_tril = self.scale_tril[perm]
        elif self.covariance_type != "tied":
            self.scale = self.scale[perm]
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
        gen = _generator(generator)
        if component is None:
            z = torch.multinomial(w.cpu().double(), n, replacement=True, generator=gen)
        else:
            if isinstance(component, bool) or not isinstance(component, int) or not 0 <= component < K:
                raise ConfigurationError(f"component must be an integer in [0, {K}), got {component!r}")
            z = torch.full((n,), component, dtype=torch.long)
        eps = torch.randn(n, self.n_features, generator=gen, dtype=loc.dtype).to(loc.device)
        z = z.to(loc.device)
        if self.covariance_type == "full":
            noise = (self.scale_tril[z] @ eps.unsqueeze(-1)).squeeze(-1)
        elif self.covariance_type == "tied":
            noise = eps @ self.scale_tril.T
        elif self.covariance_type == "diag":
            noise = eps * self.scale[z]
        else:
            noise = eps * self.scale[z].unsqueeze(-1)
        return loc[z] + noise, z

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


#: exp(d) for d below this is exp(this): no subnormal numbers (slow on CPUs); the relative
#: change of a sum of such terms is below K sqrt(tiny), far below the rounding error
def _exp_floor(dtype: torch.dtype) -> float:
    return 0.5 * math.log(torch.finfo(dtype).tiny)


def _softmax_columns_(lj: torch.Tensor, top: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Unnormalized softmax over dim 0 of a (K, n) block, in place: top <- lj.amax(0), lj <-
    exp(max(lj - top, floor)); returns 1 / lj.sum(0), written into ``norm``."""
    torch.amax(lj, 0, out=top)
    lj.sub_(top).clamp_min_(_exp_floor(lj.dtype)).exp_()
    return torch.sum(lj, 0, out=norm).reciprocal_()


def _log_sum_exp_columns_(lj: torch.Tensor) -> torch.Tensor:
    """logsumexp over dim 0 of a (K, n) block, overwriting it (faster than torch.logsumexp)."""
    top = lj.amax(0)
    return lj.sub_(top).clamp_min_(_exp_floor(lj.dtype)).exp_().sum(0).log_().add_(top)


#: at most this many chunks' partial statistics are held before they are summed (in order)
_GROUP = 64


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))


def _sq_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)
    return d.clamp_min_(0)


@torch.no_grad()
def kmeans_plusplus(
    x: torch.Tensor,
    n_clusters: int,
    *,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding: each new seed is the best of 2 + log K candidates drawn with
    probability proportional to the squared distance D(x)^2 to the nearest seed so far.
    Returns the indices of the seeds in x.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
        >>> idx = kmeans_plusplus(x, 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(int(x[i, 0] > 5) for i in idx)
        [0, 1]
    """
    gen = _generator(generator)
    n = len(x)
    rows = chunk_rows(max(n_clusters, 8), x.element_size(), chunk_size)
    trials = 2 + int(math.log(n_clusters))
    xc = x - x.mean(0)
    first = int(torch.randint(n, (), generator=gen))
    seeds = [first]
    closest = torch.cat([_sq_distances(c, xc[first : first + 1])[:, 0] for c in xc.split(rows)])
    for _ in range(1, n_clusters):
        weights = closest.double().cpu()
        if float(weights.sum()) <= 0:
            weights = torch.ones(n, dtype=torch.float64)
        cand = torch.multinomial(weights, trials, replacement=True, generator=gen).to(x.device)
        dist_to_cand = torch.cat(
            [
                torch.minimum(cl[:, None], _sq_distances(c, xc[cand]))
                for c, cl in zip(xc.split(rows), closest.split(rows))
            ]
        )
        best = int(dist_to_cand.sum(0, dtype=torch.float64).argmin())
        seeds.append(int(cand[best]))
        closest = dist_to_cand[:, best].contiguous()
    return torch.tensor(seeds, device=x.device)


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    n_clusters: int,
    *,
    generator: torch.Generator | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k-means++ seeds: minimize sum_n |x_n - c_{label_n}|^2.
    Stops when the centers move less than tol x (mean feature variance). Returns
    (centers (K, D), labels (N,)).

    Example:
        >>> x = torch.tensor([[0.0], [0.2], [10.0], [10.2]])
        >>> centers, labels = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(round(c, 3) for c in centers[:, 0].tolist())
        [0.1, 10.1]
    """
    mean = x.mean(0)
    xc = x - mean
    rows = chunk_rows(max(n_clusters, 8), x.element_size(), chunk_size)
    centers = xc[kmeans_plusplus(x, n_clusters, generator=generator, chunk_size=chunk_size)]
    threshold = tol * float(xc.var(0, unbiased=False).mean())
    for _ in range(max_iter):
        labels = torch.cat([_sq_distances(c, centers).argmin(1) for c in xc.split(rows)])
        sums = torch.zeros_like(centers).index_add_(0, labels, xc)
        counts = torch.bincount(labels, minlength=n_clusters).to(xc.dtype)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= threshold:
            break
    labels = torch.cat([_sq_distances(c, centers).argmin(1) for c in xc.split(rows)])
    return centers + mean, labels


def _digits_mixture(data, n_components: int = 10, covariance_type: str = "diag", reg_covar: float = 1e-2,
                    **options) -> GaussianMixtureModel:
    return GaussianMixtureModel(n_components, math.prod(data.event_shape), covariance_type,
                                reg_covar=reg_covar, **options)


register_model(
    "gmm",
    _digits_mixture,
    description="Gaussian mixture, 10 diagonal components (reg_covar 0.01 on pixels in [0, 1]), by EM",
    data_options={"scale": True},
    fit_options={"max_iter": 200, "tol": 1e-4, "n_init": 3},
    trainer="em",
)
