"""Scikit-learn-style estimators over the library's models.

:class:`GaussianMixture` takes scikit-learn's ``GaussianMixture`` constructor parameters and
offers its methods and fitted attributes, so it can be swapped in; underneath it is a
:class:`~lvm_pyro.models.gmm.GaussianMixtureModel` (a Pyro model/guide pair) fitted by
:func:`~lvm_pyro.infer.em.em`. It takes numpy arrays or torch tensors (on any device):
fitted attributes follow the type of the data given to ``fit``, and every method returns
the type it is given.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from sklearn.utils.validation import validate_data as sk_validate_data

from lvm_pyro.data import validate_data
from lvm_pyro.errors import ConfigurationError, DataError, DataTypeError, NotFittedError
from lvm_pyro.infer.em import EMState, em
from lvm_pyro.models.gmm import COVARIANCE_TYPES, GaussianMixtureModel

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


class EstimatorNotFittedError(NotFittedError, SklearnNotFittedError):
    """Not fitted yet: both lvm_pyro's and scikit-learn's NotFittedError, so either except works."""


def _is_torch(X) -> bool:
    return isinstance(X, torch.Tensor)


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM: p(x) = sum_k w_k N(x; mu_k, Sigma_k), scikit-learn's API.

    Parameters are scikit-learn's (``n_components, covariance_type, tol, reg_covar,
    max_iter, n_init, init_params, weights_init, means_init, precisions_init, random_state,
    warm_start, verbose, verbose_interval``) with the same meaning, plus:

    - ``device``: None (the data's device; CPU for numpy), "auto", "cpu", "cuda", ...
    - ``dtype``: None (float32 data stays float32, everything else float64, as
      scikit-learn), or a torch dtype.
    - ``chunk_size``: rows per E-step chunk (None: sized automatically; memory stays bounded).
    - ``sort_components``: put the fitted components in canonical order (decreasing weight,
      ties by first mean coordinate); False keeps the order EM ends with (scikit-learn's).

    Differences from scikit-learn: with ``sort_components=True`` the labels are the
    canonical order, not the order of the initialization; the best of ``n_init`` starts is
    chosen by the log-likelihood of its final parameters; an empty or collapsing component is
    re-seeded (``reseeded_`` lists the events); ``precisions_cholesky_`` for full/tied is the
    same upper-triangular factor scikit-learn uses.

    scikit-learn's estimator checks (``check_estimator``) all pass (``tests/test_estimators.py``)
    except one that does not apply: ``check_array_api_input`` runs only under SCIPY_ARRAY_API=1
    for estimators declaring array-API support; this one takes torch tensors directly instead
    of through scikit-learn's array-API dispatch, so it does not declare it. Sparse input is
    refused (``input_tags.sparse = False``) with a message naming ``.toarray()``.

    Example:
        >>> import numpy as np
        >>> X = np.vstack([np.random.default_rng(0).normal(m, 1, (100, 2)) for m in (-5, 5)])
        >>> gm = GaussianMixture(2, random_state=0).fit(X)
        >>> gm.converged_, np.round(gm.means_[:, 0]).tolist() in ([-5, 5], [5, -5])
        (True, True)
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        device=None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
        sort_components: bool = True,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.sort_components = sort_components

    # ----------------------------------------------------------------- input handling

    def _check_parameters(self) -> None:
        if not _is_int(self.n_components) or self.n_components < 1:
            raise ConfigurationError(
                f"n_components must be an integer >= 1, got {self.n_components!r}: a mixture "
                "needs at least one component"
            )
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ConfigurationError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )
        if self.init_params not in INIT_PARAMS:
            raise ConfigurationError(f"init_params must be one of {INIT_PARAMS}, got {self.init_params!r}")
        for name in ("tol", "reg_covar"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < np.inf:
                raise ConfigurationError(f"{name} must be non-negative and finite, got {value!r}")
        for name, low in (("max_iter", 0), ("n_init", 1), ("verbose", 0), ("verbose_interval", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ConfigurationError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("weights_init", "means_init", "precisions_init"):
            value = getattr(self, name)
            if value is not None and not _is_torch(value):
                try:
                    np.asarray(value, dtype=float)
                except (TypeError, ValueError) as exc:
                    raise ConfigurationError(f"{name} must be an array of numbers: {exc}") from exc
        for name in ("warm_start", "sort_components"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigurationError(f"{name} must be True or False, got {getattr(self, name)!r}")
        floating = isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point
        if self.dtype is not None and not floating:
            raise ConfigurationError(
                "dtype must be None or a floating torch dtype (torch.float32, torch.float64), "
                f"got {self.dtype!r}"
            )

    def _to_tensor(self, X, *, reset: bool, name: str = "X") -> torch.Tensor:
        """Validate X once (lvm_pyro's messages) and return it as a floating tensor."""
        X = _dense_2d(X, name)
        if reset:
            dtype, event_shape, device = self._fit_dtype(X), None, self.device
        else:
            if X.shape[1] != self.n_features_in_:
                raise DataError(
                    f"{name} has {X.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input: pass the same "
                    f"{self.n_features_in_} columns used in fit, in the same order, or refit"
                )
            loc = self.model_.loc
            dtype, event_shape, device = loc.dtype, (self.n_features_in_,), loc.device
        x = validate_data(X, name=name, event_shape=event_shape, dtype=dtype, device=device)
        if not _is_torch(X):
            sk_validate_data(self, X, reset=reset, skip_check_array=True)
        elif reset:
            self.n_features_in_ = x.shape[1]
        return x

    def _fit_dtype(self, X) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float32 if X.dtype in (torch.float32, np.float32) else torch.float64

    def _out(self, value: torch.Tensor, like):
        if _is_torch(like):
            return value
        return value.detach().cpu().numpy()

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "model_")
        except Exception as exc:
            raise EstimatorNotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X) before using it"
            ) from exc

    # ----------------------------------------------------------------- fitting

    def _init_function(self):
        given = {
            "weights": self.weights_init,
            "means": self.means_init,
            "precisions": self.precisions_init,
        }
        fully_given = all(v is not None for v in given.values())
        method = "kmeans++" if self.init_params == "k-means++" else self.init_params

        def init(model: GaussianMixtureModel, x: torch.Tensor, gen: torch.Generator) -> None:
            if not fully_given:
                model.initialize_(x, method, gen, self.chunk_size)
            model.set_parameters(**{k: _as_numpy(v) for k, v in given.items() if v is not None})

        return init

    def fit(self, X, y=None):
        """Estimate the parameters by EM (``n_init`` starts, the best kept); returns self.

        Example:
            >>> import numpy as np
            >>> GaussianMixture(2, random_state=0).fit(np.arange(10.0)[:, None]).n_iter_ >= 1
            True
        """
        self.fit_predict(X, y)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then return the MAP component of every point (as ``fit(X).predict(X)``)."""
        self._check_parameters()
        warm = self.warm_start and hasattr(self, "model_")
        x = self._to_tensor(X, reset=not warm)
        K = int(self.n_components)
        if warm:
            model = self.model_
        else:
            model = GaussianMixtureModel(
                K, x.shape[1], self.covariance_type, reg_covar=float(self.reg_covar)
            ).to(device=x.device, dtype=x.dtype)
        seed = self._seed()
        result = em(
            model,
            x,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            n_init=1 if warm else int(self.n_init),
            init="current" if warm else self._init_function(),
            chunk_size=self.chunk_size,
            device=x.device,
            seed=seed,
            callbacks=(self._verbose_callback,) if self.verbose else (),
            canonical_order=bool(self.sort_components),
        )
        if not result.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.model_ = model
        self.em_result_ = result
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.lower_bound
        self.lower_bounds_ = result.objective[: result.n_iter]
        self.reseeded_ = result.reseeded
        self._set_attributes(like=X)
        return self._out(model.map_z(x, self.chunk_size), X)

    def _seed(self) -> int:
        """A seed for em / sampling drawn from ``random_state`` (scikit-learn's convention)."""
        try:
            state = check_random_state(self.random_state)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"random_state must be None, an integer in [0, 2**32 - 1] or a numpy RandomState, "
                f"got {self.random_state!r}"
            ) from exc
        return int(state.randint(np.iinfo(np.int32).max))

    def _verbose_callback(self, state: EMState) -> None:
        if state.iteration == 1:
            print(f"Initialization {state.init}")
        if self.verbose >= 2 and state.iteration % self.verbose_interval == 0:
            print(f"  Iteration {state.iteration}\t log-likelihood {state.objective[-1]:.5f}")

    def _set_attributes(self, like) -> None:
        m = self.model_
        with torch.no_grad():
            self.weights_ = self._out(m.weights.detach(), like)
            self.means_ = self._out(m.loc.detach(), like)
            self.covariances_ = self._out(m.covariances().detach(), like)
            self.precisions_ = self._out(m.precisions().detach(), like)
            self.precisions_cholesky_ = self._out(m.precisions_cholesky().detach(), like)

    # ----------------------------------------------------------------- the fitted mixture

    def score_samples(self, X):
        """log p(x_n) for every row, shape (n_samples,)."""
        self._check_fitted()
        return self._out(self.model_.log_prob(self._to_tensor(X, reset=False), self.chunk_size), X)

    def score(self, X, y=None) -> float:
        """Mean log-likelihood (1/N) sum_n log p(x_n)."""
        self._check_fitted()
        x = self._to_tensor(X, reset=False)
        return float(self.model_.log_prob(x, self.chunk_size).mean(dtype=torch.float64))

    def predict(self, X):
        """Hard clustering: argmax_k p(z = k | x) per row."""
        self._check_fitted()
        return self._out(self.model_.map_z(self._to_tensor(X, reset=False), self.chunk_size), X)

    def predict_proba(self, X):
        """Responsibilities p(z = k | x) by Bayes' rule, shape (n_samples, n_components)."""
        self._check_fitted()
        x = self._to_tensor(X, reset=False)
        return self._out(self.model_.posterior(x, self.chunk_size), X)

    def sample(self, n_samples: int = 1, component: int | None = None):
        """Draw (X, y): y ~ Categorical(weights_) (or y = component), X | y ~ N(mu_y, Sigma_y).

        Returns arrays of the type the estimator was fitted on.
        """
        self._check_fitted()
        if not _is_int(n_samples) or n_samples < 1:
            raise ConfigurationError(
                f"Invalid value for 'n_samples': {n_samples!r}; the sampling requires at least one sample"
            )
        seed = self._seed()
        gen = torch.Generator().manual_seed(seed)
        x, z = self.model_.sample(int(n_samples), component=component, generator=gen)
        return self._out(x, self.means_), self._out(z, self.means_)

    def _n_parameters(self) -> int:
        return self.model_.num_parameters()

    def bic(self, X) -> float:
        """Bayesian information criterion: -2 log p(X) + n_parameters log N (lower is better)."""
        self._check_fitted()
        return self.model_.bic(self._to_tensor(X, reset=False), self.chunk_size)

    def aic(self, X) -> float:
        """Akaike information criterion: -2 log p(X) + 2 n_parameters (lower is better)."""
        self._check_fitted()
        return self.model_.aic(self._to_tensor(X, reset=False), self.chunk_size)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


def _dense_2d(X, name: str):
    """scikit-learn's input conventions, checked before lvm_pyro's validation: a dense,
    numeric, real, 2-D array with at least one feature (torch tensors pass through)."""
    if _is_torch(X):
        return X
    if sp.issparse(X):
        raise DataTypeError(
            f"Sparse data was passed for {name}, but dense data is required: convert it with {name}.toarray()"
        )
    try:
        X = np.asarray(X)
    except ValueError as exc:  # ragged nested lists
        raise DataTypeError(
            f"{name} cannot be read as a numeric array ({exc}): pass rows of equal length"
        ) from exc
    if X.dtype == object:
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise DataTypeError(
                f"{name} has dtype object with non-numeric entries ({exc}): pass numbers only"
            ) from exc
    if np.iscomplexobj(X):
        raise DataError(
            f"Complex data not supported: {name} is {X.dtype}; pass real values, e.g. "
            f"{name}.real or np.abs({name})"
        )
    if X.ndim == 1:
        raise DataError(
            f"Expected 2D array, got 1D array instead: Reshape your data either using "
            f"{name}.reshape(-1, 1) if it has a single feature or {name}.reshape(1, -1) if it "
            "is a single sample"
        )
    if X.ndim == 2 and X.shape[1] == 0:
        raise DataError(
            f"{name} has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required: pass "
            "at least one feature column"
        )
    return X


def _is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_numpy(value):
    if _is_torch(value):
        return value.detach().cpu().numpy()
    return np.asarray(value, dtype=float)


__all__ = ["EstimatorNotFittedError", "GaussianMixture"]
