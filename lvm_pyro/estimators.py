"""Scikit-learn-style estimators over the library's models.

:class:`GaussianMixture` takes scikit-learn's ``GaussianMixture`` constructor parameters and
offers its methods and fitted attributes, so it can be swapped in; underneath it is a
:class:`~lvm_pyro.models.gmm.GaussianMixtureModel` (a Pyro model/guide pair) fitted by
:func:`~lvm_pyro.infer.em.em`. It takes numpy arrays or torch tensors (on any device):
fitted attributes follow the type of the data given to ``fit``, and every method returns
the type it is given.

Beyond scikit-learn's mixture: ``fit(X, sample_weight=w)`` (integer weights equal replicated
rows), ``partial_fit`` (online EM, one minibatch a call, as ``MiniBatchKMeans.partial_fit``)
and ``batch_size=`` (``fit`` by online EM over minibatches of an array, a memory-mapped
``.npy`` array or a ``.npy`` path, memory bounded by the batch).
"""

from __future__ import annotations

import inspect
import os
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

from lvm_pyro.errors import ConfigurationError, DataError, DataTypeError, NotFittedError
from lvm_pyro.infer.em import EMState, em
from lvm_pyro.infer.online_em import OnlineEM, online_em
from lvm_pyro.models.gmm import COVARIANCE_TYPES, GaussianMixtureModel, check_sample_weight
from lvm_pyro.models.gmm.missing import validate_missing_data

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
      ``partial_fit`` never reorders (its running statistics are per component).
    - ``batch_size``: None (batch EM, the default) or rows per minibatch: ``fit`` then runs
      online EM (:func:`~lvm_pyro.infer.online_em.online_em`) for ``max_iter`` passes over
      X, which may be a memory-mapped array or a path to a ``.npy`` file, with Polyak
      averaging of the statistics after the first pass; ``tol`` compares the passes' mean
      log-likelihoods, and ``n_init`` must be 1.
    - ``learning_decay``, ``learning_offset``: the step sizes of online EM (``partial_fit``
      and ``batch_size``), gamma_t = (t + learning_offset)^-learning_decay, as scikit-learn's
      ``LatentDirichletAllocation``; learning_decay in (0.5, 1].

    Missing values: NaN entries in X (missing at random) are marginalized exactly in ``fit``,
    ``partial_fit``, ``score``, ``score_samples``, ``predict``, ``predict_proba``, ``bic`` and
    ``aic`` (the E-step conditions on each row's observed entries, for every covariance type;
    :mod:`lvm_pyro.models.gmm.missing`); rows with every entry missing and columns missing in
    every row are refused by ``fit``. scikit-learn's mixture refuses NaN.

    Sample weights (``fit(X, sample_weight=w)``, ``partial_fit(X, sample_weight=w)``):
    non-negative, one per row; a row of weight w counts as w copies in every E-step
    statistic, in the k-means(++) initialization and in ``lower_bound_`` (a weighted mean).
    ``score`` stays the unweighted mean over the rows given.

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
        batch_size: int | None = None,
        learning_decay: float = 0.6,
        learning_offset: float = 0.0,
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
        self.batch_size = batch_size
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset

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
        if self.batch_size is not None and (not _is_int(self.batch_size) or self.batch_size < 1):
            raise ConfigurationError(f"batch_size must be None or an integer >= 1, got {self.batch_size!r}")
        decay = self.learning_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.5 < decay <= 1:
            raise ConfigurationError(f"learning_decay must be in (0.5, 1], got {decay!r}")
        offset = self.learning_offset
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 <= offset < np.inf:
            raise ConfigurationError(f"learning_offset must be a finite number >= 0, got {offset!r}")
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
        x = validate_missing_data(
            X, name=name, event_shape=event_shape, dtype=dtype, device=device, fit=reset
        )
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

    def _init_function(self, sample_weight: torch.Tensor | None = None):
        given = {
            "weights": self.weights_init,
            "means": self.means_init,
            "precisions": self.precisions_init,
        }
        fully_given = all(v is not None for v in given.values())
        method = "kmeans++" if self.init_params == "k-means++" else self.init_params

        def init(model: GaussianMixtureModel, x: torch.Tensor, gen: torch.Generator) -> None:
            if not fully_given:
                model.initialize_(x, method, gen, self.chunk_size, sample_weight=sample_weight)
            model.set_parameters(**{k: _as_numpy(v) for k, v in given.items() if v is not None})

        return init

    def fit(self, X, y=None, sample_weight=None):
        """Estimate the parameters by EM (``n_init`` starts, the best kept), or by online EM
        over minibatches when ``batch_size`` is set; returns self.

        Example:
            >>> import numpy as np
            >>> GaussianMixture(2, random_state=0).fit(np.arange(10.0)[:, None]).n_iter_ >= 1
            True
        """
        self._check_parameters()
        self._forget_online()
        if self.batch_size is not None:
            return self._fit_online(X, sample_weight)
        self._fit_batch(X, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the MAP component of every point (as ``fit(X).predict(X)``)."""
        self._check_parameters()
        self._forget_online()
        if self.batch_size is not None:
            return self._fit_online(X, sample_weight).predict(X)
        x = self._fit_batch(X, sample_weight)
        return self._out(self.model_.map_z(x, self.chunk_size), X)

    def _forget_online(self) -> None:
        """A fit starts afresh: a later partial_fit continues from it with new counters."""
        self._online_ = None
        for name in ("n_steps_", "n_samples_seen_"):
            self.__dict__.pop(name, None)

    def _new_model(self, n_features: int, like: torch.Tensor) -> GaussianMixtureModel:
        return GaussianMixtureModel(
            int(self.n_components), n_features, self.covariance_type, reg_covar=float(self.reg_covar)
        ).to(device=like.device, dtype=like.dtype)

    def _fit_batch(self, X, sample_weight) -> torch.Tensor:
        warm = self.warm_start and hasattr(self, "model_")
        x = self._to_tensor(X, reset=not warm)
        w = check_sample_weight(sample_weight, len(x), x)
        model = self.model_ if warm else self._new_model(x.shape[1], x)
        weighted = {} if w is None else {"sample_weight": w}
        if weighted and "sample_weight" not in inspect.signature(em).parameters:
            raise ConfigurationError(
                "this version of lvm_pyro.em has no sample_weight: fit with batch_size=... (online "
                "EM takes weights) or upgrade"
            )
        result = em(
            model,
            x,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            n_init=1 if warm else int(self.n_init),
            init="current" if warm else self._init_function(w),
            chunk_size=self.chunk_size,
            device=x.device,
            seed=self._seed(),
            callbacks=(self._verbose_callback,) if self.verbose else (),
            canonical_order=bool(self.sort_components),
            **weighted,
        )
        if not result.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.model_ = model
        self.em_result_ = result
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.lower_bound
        self.lower_bounds_ = result.objective[: result.n_iter]
        self.reseeded_ = result.reseeded
        self._set_attributes(like=X)
        return x

    def _fit_online(self, X, sample_weight):
        """fit with batch_size: online EM over minibatches of X (array, memmap or .npy path)."""
        if int(self.n_init) != 1:
            raise ConfigurationError(
                f"n_init={self.n_init} with batch_size: online EM runs one start; pass n_init=1"
            )
        if self.max_iter < 1:
            raise ConfigurationError("max_iter (passes over the data) must be >= 1 with batch_size")
        warm = self.warm_start and hasattr(self, "model_")
        source = np.load(os.fspath(X), mmap_mode="r") if isinstance(X, (str, os.PathLike)) else X
        if not _is_torch(source):
            source = _dense_2d(source, "X")
        if source.ndim != 2:
            raise DataError(f"X has shape {tuple(source.shape)}: pass a 2-D array of rows")
        if warm and source.shape[1] != self.n_features_in_:
            raise DataError(
                f"X has {source.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        dtype = self._fit_dtype(source)
        first_row = source[:1] if _is_torch(source) else np.array(source[:1])
        probe = validate_missing_data(first_row, name="X", dtype=dtype, device=self.device)
        model = self.model_ if warm else self._new_model(source.shape[1], probe)
        self.n_features_in_ = source.shape[1]
        weights = None
        if sample_weight is not None:
            weights = check_sample_weight(sample_weight, len(source), probe.cpu().double()).numpy()
        result = online_em(
            model,
            source,
            batch_size=int(self.batch_size),
            max_passes=int(self.max_iter),
            kappa=float(self.learning_decay),
            t0=float(self.learning_offset),
            sample_weight=weights,
            init="current" if warm else self._init_function(),
            tol=float(self.tol),
            seed=self._seed(),
            chunk_size=self.chunk_size,
            dtype=dtype,
            device=probe.device,
        )
        if self.sort_components:
            model.canonicalize_()
        self.model_ = model
        self.em_result_ = result
        self.converged_ = result.converged
        self.n_iter_ = result.n_passes
        self.n_steps_ = result.n_steps
        self.lower_bound_ = result.pass_log_likelihood[-1]
        self.lower_bounds_ = list(result.pass_log_likelihood)
        self.reseeded_ = []
        self._set_attributes(like=source if _is_torch(source) else np.empty(0))
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """One step of online EM on the minibatch X (Cappe and Moulines, 2009); returns self.

        The first call checks the parameters and initializes the mixture from X (``init_params``
        on X, or the given ``*_init``; X needs at least ``n_components`` rows), as
        ``MiniBatchKMeans.partial_fit``; every call then updates the running statistics
        s <- (1 - gamma_t) s + gamma_t s(X), gamma_t = (t + learning_offset)^-learning_decay
        (gamma_1 = 1), and sets the parameters to their M-step. ``n_steps_`` counts the
        calls, ``n_samples_seen_`` the rows. The last iterate is kept (no averaging), and the
        components are not reordered.

        Example:
            >>> import numpy as np
            >>> rng = np.random.default_rng(0)
            >>> gm = GaussianMixture(2, covariance_type="diag", random_state=0)
            >>> for _ in range(20):
            ...     z = rng.integers(2, size=200)
            ...     _ = gm.partial_fit(np.where(z[:, None] == 1, 4.0, -4.0) + rng.normal(size=(200, 1)))
            >>> gm.n_steps_, sorted(np.round(gm.means_[:, 0]).tolist())
            (20, [-4.0, 4.0])
        """
        first = not hasattr(self, "model_")
        if first:
            self._check_parameters()
        x = self._to_tensor(X, reset=first)
        w = check_sample_weight(sample_weight, len(x), x)
        if first:
            self.model_ = self._new_model(x.shape[1], x)
            self._init_function(w)(self.model_, x, torch.Generator().manual_seed(self._seed()))
            self.n_steps_ = 0
            self.n_samples_seen_ = 0
        if getattr(self, "_online_", None) is None:  # first call, or the first after fit
            self._online_ = OnlineEM(
                self.model_,
                kappa=float(self.learning_decay),
                t0=float(self.learning_offset),
                averaging=None,
                chunk_size=self.chunk_size,
            )
        self._online_.step(x, w)
        self.n_steps_ = getattr(self, "n_steps_", 0) + 1
        self.n_samples_seen_ = getattr(self, "n_samples_seen_", 0) + len(x)
        self._set_attributes(like=X)
        return self

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
        tags.input_tags.allow_nan = True
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
