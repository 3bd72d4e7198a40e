"""One object per covariance type: everything about the covariance that differs between
"full", "tied", "diag" and "spherical" lives here, so the mixture has no branch on the type.

Each object is stateless. It names the module parameter that stores the covariance factor
(``scale_tril``: a lower Cholesky factor of Sigma, for full/tied; ``scale``: standard
deviations, for diag/spherical) and maps that factor to the pieces the mixture needs:

- shapes and counts (scikit-learn's shapes; free parameters for BIC/AIC);
- covariances, precisions and ``precisions_cholesky`` from the factor, and the factor from
  given covariances or precisions;
- the Pyro program's pieces: the precision prior (flat, Wishart or Gamma) and the component
  distribution of x given z;
- the closed-form E-step: the features phi(x') beyond x' (x'_i x'_j for i <= j, x'^2,
  |x'|^2, or none), and the coefficients of log N(x; mu_k, Sigma_k) on them;
- the M-step: statistics from the products sum_n r_nk phi_n, the scatter about the means,
  the maximum-likelihood or MAP covariance and its factor;
- the remaining per-component operations (re-seeding, permuting, sampling noise).

Example:
    >>> cov = COVARIANCES["diag"]
    >>> cov.shape(3, 2), cov.n_parameters(3, 2), cov.n_phi(2)
    ((3, 2), 6, 4)
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from lvm_pyro.errors import ConfigurationError
from lvm_pyro.models.transforms import BijectiveWishart, bijective_positive_definite

ILL_DEFINED = (
    "{name} are not all positive-definite; for fitted covariances this means some components "
    "have ill-defined empirical covariance (a singleton or collapsed sample): increase "
    "reg_covar, decrease n_components, or scale the input data"
)


def cholesky(matrix: torch.Tensor, name: str) -> torch.Tensor:
    """Lower Cholesky factor, or a ConfigurationError naming ``name`` and the fix."""
    L, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        raise ConfigurationError(ILL_DEFINED.format(name=name))
    return L


def _eye(d: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(d, dtype=like.dtype, device=like.device)


class Covariance:
    """The interface; see the module docstring. ``factor`` is the stored parameter."""

    name: str
    #: the module attribute holding the factor
    param: str
    #: whether the factor is a Cholesky factor of a D x D matrix (full, tied)
    matrix: bool = False
    #: whether the E-step needs sum_n x'_n x'_n^T pooled over components (tied)
    pooled: bool = False

    # shapes ----------------------------------------------------------------------
    def shape(self, K: int, D: int) -> tuple[int, ...]:
        """scikit-learn's shape of the covariances (and precisions)."""
        raise NotImplementedError

    def n_parameters(self, K: int, D: int) -> int:
        raise NotImplementedError

    def constraint(self):
        return constraints.lower_cholesky if self.matrix else constraints.positive

    def initial_factor(self, K: int, D: int) -> torch.Tensor:
        """Identity covariances."""
        if self.matrix:
            return torch.eye(D).expand(*self.shape(K, D)).clone()
        return torch.ones(self.shape(K, D))

    # parameters ------------------------------------------------------------------
    def covariances(self, factor: torch.Tensor) -> torch.Tensor:
        return factor @ factor.mT if self.matrix else factor**2

    def precisions(self, factor: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_inverse(factor) if self.matrix else factor**-2

    def precisions_cholesky(self, factor: torch.Tensor) -> torch.Tensor:
        """P with P P^T = precision: upper-triangular L^-T (full/tied), 1 / scale otherwise."""
        if self.matrix:
            eye = _eye(factor.shape[-1], factor).expand_as(factor)
            return torch.linalg.solve_triangular(factor, eye, upper=False).mT
        return 1.0 / factor

    def factor_from(self, value: torch.Tensor, name: str) -> torch.Tensor:
        """The factor from covariances (name "covariances") or precisions."""
        if self.matrix:
            if name != "covariances":
                value = torch.cholesky_inverse(cholesky(value, name))
            return cholesky(value, name)
        if bool((value <= 0).any()):
            raise ConfigurationError(f"{name} must be positive")
        return value.sqrt() if name == "covariances" else value.rsqrt()

    # the Pyro program -------------------------------------------------------------
    def precision_prior(self, prior, like: torch.Tensor, K: int, D: int) -> dist.Distribution:
        """Flat (prior.precision_df None), Wishart (full/tied) or Gamma (diag/spherical).
        Positive-definite sites carry :func:`~lvm_pyro.models.transforms.bijective_positive_definite`
        as their support, so autoguides and NUTS can transform them."""
        shape = self.shape(K, D)
        n_event = 2 if self.matrix else 0
        batch, event = shape[: len(shape) - n_event], shape[len(shape) - n_event :]
        if prior.precision_df is None:
            support = bijective_positive_definite() if self.matrix else constraints.positive
            flat = dist.ImproperUniform(support, batch, event)
            return flat.to_event(len(batch)) if batch else flat
        if self.matrix:
            df = like.new_tensor(prior.precision_df)
            tril = _eye(D, like) / math.sqrt(prior.precision_df * prior.covariance_scale**2)
            wishart = BijectiveWishart(df, scale_tril=tril)
            return wishart.expand(batch).to_event(len(batch)) if batch else wishart
        a = like.new_full(shape, prior.precision_df / 2)
        b = like.new_full(shape, prior.precision_df * prior.covariance_scale**2 / 2)
        return dist.Gamma(a, b).to_event(len(shape))

    def component(self, loc: torch.Tensor, precision: torch.Tensor, z: torch.Tensor):
        """The distribution of x given z (an enumerated or sampled index tensor)."""
        raise NotImplementedError

    # the closed-form E-step ----------------------------------------------------------
    def n_phi(self, D: int) -> int:
        """Features phi(x') = [x', second-order part]: their number."""
        raise NotImplementedError

    def write_second_order(self, xs: torch.Tensor, out: torch.Tensor) -> None:
        """Write the second-order features of x' (n, D) into out (n, n_phi - D)."""

    def coefficients(self, mu: torch.Tensor, factor: torch.Tensor):
        """log N(x; mu_k, Sigma_k) = A_k . phi(x') + c_k (+ a per-row term for tied), with mu
        relative to the shift: returns (A (K, n_phi), lin (K, D) = Lambda_k mu_k, half log
        det Sigma_k (K,) or (), the tied per-row factor or None)."""
        raise NotImplementedError

    # the M-step ---------------------------------------------------------------------
    def second_moments(self, S2: torch.Tensor, pooled: torch.Tensor | None, K: int, D: int) -> torch.Tensor:
        """The statistic ``sxx`` from the rows of sum_n r_nk phi_n beyond x' (S2: (n_phi - D,
        K)) or, for tied, the pooled sum_n x'_n x'_n^T."""
        raise NotImplementedError

    def responsibility_second_moments(self, xs: torch.Tensor, resp: torch.Tensor) -> torch.Tensor | None:
        """The pooled sum_n w_n x'_n x'_n^T of :meth:`second_moments` (tied), else None."""
        return None

    def scatter(self, sxx, sx, mu, nk) -> torch.Tensor:
        """sum_n r_nk (x'_n - mu_k)(x'_n - mu_k)^T in this type's shape (per feature,
        averaged over features, for spherical)."""
        raise NotImplementedError

    def covariance(self, scatter: torch.Tensor, nk: torch.Tensor, prior, D: int) -> torch.Tensor:
        """Maximum likelihood scatter / n_k, or the MAP covariance under the Wishart/Gamma prior."""
        raise NotImplementedError

    def factor_from_covariance(self, cov: torch.Tensor, reg_covar: float) -> torch.Tensor:
        """The factor of cov + reg_covar I. For matrices, where rounding left cov slightly
        indefinite (a zero scatter computed as a difference of second moments), its negative
        eigenvalues are first set to zero; for variances, negative rounding is clamped."""
        if self.matrix:
            eye = _eye(cov.shape[-1], cov)
            cov = 0.5 * (cov + cov.mT)
            L, info = torch.linalg.cholesky_ex(cov + reg_covar * eye)
            if bool((info != 0).any()):
                evals, evecs = torch.linalg.eigh(cov)
                cov = (evecs * evals.clamp_min(0).unsqueeze(-2)) @ evecs.mT
                L = cholesky(cov + reg_covar * eye, "covariances")
            return L
        cov = cov.clamp_min(0) + reg_covar
        if bool((cov <= 0).any()):
            raise ConfigurationError(ILL_DEFINED.format(name="covariances"))
        return cov.sqrt()

    def map_means(self, nk, sx, precision, tau: float, m0) -> torch.Tensor:
        """argmax over mu of the expected log joint plus a Normal(m0, I / tau) prior, given
        the precisions: (n_k Lambda_k + tau I)^-1 (Lambda_k sx_k + tau m0)."""
        prec = precision.reshape(len(sx), -1)  # (K, D) or (K, 1)
        return (prec * sx + tau * m0) / (nk[:, None] * prec + tau)

    # per-component operations ----------------------------------------------------------
    def pooled_covariance(self, sxx, mean, n, D: int, reg_covar: float) -> torch.Tensor:
        """The data's overall covariance in this type's per-component shape (re-seeding)."""
        raise NotImplementedError

    def reseed(self, factor: torch.Tensor, empty: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """The factor with components ``empty`` set to covariance ``cov``."""
        factor = factor.clone()
        if self.matrix:
            factor[empty] = cholesky(cov.to(factor), "covariances")
        else:
            factor[empty] = cov.clamp_min(torch.finfo(cov.dtype).tiny).sqrt().to(factor)
        return factor

    def permute(self, factor: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        return factor[perm]

    def noise(self, factor: torch.Tensor, eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """L_z eps: standard normal eps (n, D) to N(0, Sigma_z)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Full(Covariance):
    """One D x D covariance per component (K, D, D), stored as lower Cholesky factors."""

    name, param, matrix = "full", "scale_tril", True

    def shape(self, K, D):
        return (K, D, D)

    def n_parameters(self, K, D):
        return K * D * (D + 1) // 2

    def component(self, loc, precision, z):
        return dist.MultivariateNormal(loc[z], precision_matrix=precision[z])

    def n_phi(self, D):
        return D + D * (D + 1) // 2

    def write_second_order(self, xs, out):
        D, start = xs.shape[1], 0
        for i in range(D):  # x'_i x'_j, j >= i, in triu_indices order
            torch.mul(xs[:, i:], xs[:, i : i + 1], out=out[:, start : start + D - i])
            start += D - i

    def coefficients(self, mu, factor):
        D = mu.shape[1]
        prec = torch.cholesky_inverse(factor)
        lin = (prec @ mu.unsqueeze(-1)).squeeze(-1)
        # x^T Lambda x over the upper triangle: Lambda_ii x_i^2 + 2 Lambda_ij x_i x_j
        rows, cols = torch.triu_indices(D, D, device=prec.device)
        quad = torch.where(rows == cols, -0.5, -1.0).to(prec) * prec[:, rows, cols]
        half_logdet = torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
        return torch.cat([lin, quad], 1), lin, half_logdet, None

    def second_moments(self, S2, pooled, K, D):
        rows, cols = torch.triu_indices(D, D, device=S2.device)
        upper = S2.new_zeros(K, D, D)
        upper[:, rows, cols] = S2.T
        return upper + upper.mT - torch.diag_embed(torch.diagonal(upper, dim1=-2, dim2=-1))

    def scatter(self, sxx, sx, mu, nk):
        outer = sx.unsqueeze(2) * mu.unsqueeze(1)
        return sxx - outer - outer.mT + nk[:, None, None] * mu.unsqueeze(2) * mu.unsqueeze(1)

    def covariance(self, scatter, nk, prior, D):
        if prior.precision_df is None:
            return scatter / nk[:, None, None]
        df, s2 = prior.precision_df, prior.covariance_scale**2
        return (scatter + df * s2 * _eye(D, scatter)) / (nk + df - D - 1)[:, None, None]

    def map_means(self, nk, sx, precision, tau, m0):
        K, D = sx.shape
        prec = precision.expand(K, D, D)
        lhs = nk[:, None, None] * prec + tau * _eye(D, sx)
        rhs = (prec @ sx.unsqueeze(-1)).squeeze(-1) + tau * m0
        return torch.linalg.solve(lhs, rhs)

    def pooled_covariance(self, sxx, mean, n, D, reg_covar):
        total = sxx if self.pooled else sxx.sum(0)
        cov = total / n - mean[:, None] * mean[None, :]
        return cov + reg_covar * _eye(D, cov)

    def noise(self, factor, eps, z):
        return (factor[z] @ eps.unsqueeze(-1)).squeeze(-1)


class Tied(Full):
    """One D x D covariance shared by all components (D, D), stored as its Cholesky factor.

    The quadratic term x'^T Lambda x' is the same for every component: it is computed once
    per row (the per-row term) instead of through K coefficients on D(D+1)/2 features."""

    name, pooled = "tied", True

    def shape(self, K, D):
        return (D, D)

    def n_parameters(self, K, D):
        return D * (D + 1) // 2

    def component(self, loc, precision, z):
        return dist.MultivariateNormal(loc[z], precision_matrix=precision)

    def n_phi(self, D):
        return D

    def write_second_order(self, xs, out):
        pass

    def coefficients(self, mu, factor):
        prec = torch.cholesky_inverse(factor)
        lin = mu @ prec
        half_logdet = torch.log(torch.diagonal(factor)).sum()
        row_factor = torch.linalg.solve_triangular(factor, _eye(len(factor), factor), upper=False).T
        return lin, lin, half_logdet, row_factor

    def second_moments(self, S2, pooled, K, D):
        return pooled

    def responsibility_second_moments(self, xs, resp):
        w = resp.sum(1, keepdim=True)
        return xs.T @ (xs * w)

    def scatter(self, sxx, sx, mu, nk):
        outer = sx.T @ mu
        return sxx - outer - outer.T + (nk[:, None] * mu).T @ mu

    def covariance(self, scatter, nk, prior, D):
        if prior.precision_df is None:
            return scatter / nk.sum()
        df, s2 = prior.precision_df, prior.covariance_scale**2
        return (scatter + df * s2 * _eye(D, scatter)) / (nk.sum() + df - D - 1)

    def reseed(self, factor, empty, cov):
        return factor  # shared: nothing per component

    def permute(self, factor, perm):
        return factor

    def noise(self, factor, eps, z):
        return eps @ factor.T


class Diag(Covariance):
    """One variance per component and feature (K, D), stored as standard deviations."""

    name, param = "diag", "scale"

    def shape(self, K, D):
        return (K, D)

    def n_parameters(self, K, D):
        return K * D

    def component(self, loc, precision, z):
        return dist.Normal(loc[z], precision.rsqrt()[z]).to_event(1)

    def n_phi(self, D):
        return 2 * D

    def write_second_order(self, xs, out):
        torch.mul(xs, xs, out=out)

    def coefficients(self, mu, factor):
        prec = factor**-2
        lin = mu * prec
        return torch.cat([lin, -0.5 * prec], 1), lin, torch.log(factor).sum(1), None

    def second_moments(self, S2, pooled, K, D):
        return S2.T

    def scatter(self, sxx, sx, mu, nk):
        return sxx - 2 * sx * mu + nk[:, None] * mu * mu

    def covariance(self, scatter, nk, prior, D):
        if prior.precision_df is None:
            return scatter / nk[:, None]
        df, s2 = prior.precision_df, prior.covariance_scale**2
        return (scatter + df * s2) / (nk + df - 2)[:, None]

    def pooled_covariance(self, sxx, mean, n, D, reg_covar):
        return sxx.sum(0) / n - mean**2 + reg_covar

    def noise(self, factor, eps, z):
        return eps * factor[z]


class Spherical(Covariance):
    """One variance per component (K,), stored as standard deviations."""

    name, param = "spherical", "scale"

    def shape(self, K, D):
        return (K,)

    def n_parameters(self, K, D):
        return K

    def component(self, loc, precision, z):
        return dist.Normal(loc[z], precision.rsqrt()[z].unsqueeze(-1)).to_event(1)

    def n_phi(self, D):
        return D + 1

    def write_second_order(self, xs, out):
        torch.linalg.vecdot(xs, xs, out=out[:, 0])

    def coefficients(self, mu, factor):
        prec = factor**-2
        lin = mu * prec[:, None]
        half_logdet = mu.shape[1] * torch.log(factor)
        return torch.cat([lin, -0.5 * prec[:, None]], 1), lin, half_logdet, None

    def second_moments(self, S2, pooled, K, D):
        return S2[0]

    def scatter(self, sxx, sx, mu, nk):
        # the scatter per feature, averaged over the D features
        return (sxx - 2 * (sx * mu).sum(1) + nk * (mu * mu).sum(1)) / sx.shape[1]

    def covariance(self, scatter, nk, prior, D):
        if prior.precision_df is None:
            return scatter / nk
        df, s2 = prior.precision_df, prior.covariance_scale**2
        return (D * scatter + df * s2) / (D * nk + df - 2)

    def pooled_covariance(self, sxx, mean, n, D, reg_covar):
        return (sxx.sum() / n - (mean**2).sum()) / D + reg_covar

    def noise(self, factor, eps, z):
        return eps * factor[z].unsqueeze(-1)


#: covariance_type -> its object
COVARIANCES: dict[str, Covariance] = {c.name: c for c in (Full(), Tied(), Diag(), Spherical())}
COVARIANCE_TYPES = tuple(COVARIANCES)
