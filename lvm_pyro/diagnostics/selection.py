"""Choosing the number of mixture components K by PSIS-LOO or by BIC.

BIC = -2 log p(x | theta_hat) + p log N for the EM (maximum-likelihood) fit of each K: the
smallest wins. LOO needs a posterior: for each K the EM fit starts a Bayesian Gaussian
mixture (weakly informative priors scaled to the data, :func:`default_prior`) whose global
parameters get a mean-field Normal guide trained by SVI with z summed out; its draws give
elpd_loo = sum_i log p(x_i | x_-i) by Pareto-smoothed importance sampling: the largest wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch

from lvm_pyro.checks import check_seed
from lvm_pyro.data import validate_data
from lvm_pyro.diagnostics.export import to_inference_data
from lvm_pyro.diagnostics.loo import loo
from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.estimators import GaussianMixture
from lvm_pyro.infer.svi import fit
from lvm_pyro.models.gmm import COVARIANCE_TYPES, GaussianMixtureModel, GMMPrior

CRITERIA = ("loo", "bic")

RULES = ("one_se", "max")

__all__ = ["CRITERIA", "RULES", "ComponentSelection", "default_prior", "select_components"]


@dataclass(frozen=True)
class ComponentSelection:
    """The outcome of :func:`select_components`.

    ``scores[k]``: elpd_loo (criterion "loo", higher is better) or BIC ("bic", lower is
    better); ``standard_errors[k]``: the standard error of elpd_loo (LOO only);
    ``difference_standard_errors[k]``: the standard error of elpd_loo(best) - elpd_loo(k),
    from the pointwise differences (LOO only; what ``az.compare`` calls dse);
    ``estimators[k]``: the EM fit of each K; ``inference_data[k]``: the posterior draws behind
    each LOO score; ``max_khat[k]``: the largest per-point Pareto k of each LOO estimate
    (above 0.7 the estimate for that K is unreliable).
    """

    criterion: str
    best_k: int
    scores: dict[int, float]
    standard_errors: dict[int, float] = field(default_factory=dict)
    max_khat: dict[int, float] = field(default_factory=dict)
    estimators: dict[int, GaussianMixture] = field(default_factory=dict, repr=False)
    inference_data: dict = field(default_factory=dict, repr=False)
    difference_standard_errors: dict[int, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A table of the score per K, the chosen K marked."""
        name = "elpd_loo (higher is better)" if self.criterion == "loo" else "BIC (lower is better)"
        lines = [f"K by {name}:"]
        for k, score in self.scores.items():
            extra = ""
            if k in self.standard_errors:
                extra = (f"  se {self.standard_errors[k]:8.2f}  diff to top se "
                         f"{self.difference_standard_errors.get(k, float('nan')):6.2f}  "
                         f"max k-hat {self.max_khat[k]:.2f}")
            mark = "  <- best" if k == self.best_k else ""
            lines.append(f"  K={k:<3d} {score:12.2f}{extra}{mark}")
        return "\n".join(lines)


def default_prior(x: torch.Tensor) -> GMMPrior:
    """Weakly informative priors on the data's location and scale, the same for every K.

    With m_d and s_d the mean and standard deviation of feature d, s_max = max_d s_d and
    s_rms = sqrt(mean_d s_d^2) (the prior's scales are one number for every feature):

    - weights ~ Dirichlet(1, ..., 1) (uniform on the simplex);
    - loc[k] ~ N(m, s_max^2 I): the component means lie where the data lie (about 95% of the
      prior mass within two standard deviations of the data's centre, in every feature);
    - precisions ~ Gamma (diag, spherical) or Wishart (full, tied) with mean 1 / s_rms^2 and
      D degrees of freedom, the fewest a Wishart allows (scikit-learn's
      ``BayesianGaussianMixture`` default): the spread of the whole data bounds a
      component's variance from above, it is no estimate of it, so it gets the weight of
      only D observations. With more, every component's variance is pulled towards the
      data's, small components blur, and LOO predicts worse.

    Features on very different scales make any single scale a compromise: standardize them
    first.

    Example:
        >>> prior = default_prior(torch.tensor([[0.0, 10.0], [2.0, 12.0]]))
        >>> prior.mean_loc, prior.mean_scale, prior.covariance_scale, prior.precision_df
        ((1.0, 11.0), 1.0, 1.0, 2.0)
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() != 2 or len(x) == 0:
        raise DataError(f"default_prior needs an (N, D) array of points, got shape {tuple(x.shape)}")
    sd = x.std(0, unbiased=False)
    return GMMPrior(
        weight_concentration=1.0,
        mean_loc=tuple(float(m) for m in x.mean(0)),
        mean_scale=float(sd.max()) or 1.0,
        precision_df=float(x.shape[1]),
        covariance_scale=float(sd.pow(2).mean().sqrt()) or 1.0,
    )


def select_components(
    data,
    ks: Sequence[int] = (1, 2, 3, 4, 5),
    *,
    criterion: str = "loo",
    covariance_type: str = "diag",
    prior: GMMPrior | None = None,
    n_init: int = 1,
    steps: int = 300,
    lr: float = 0.02,
    num_samples: int = 200,
    seed: int = 0,
    rule: str = "one_se",
) -> ComponentSelection:
    """Pick the number of Gaussian-mixture components K: argmax_K elpd_loo(K) or argmin_K BIC(K).

    Args:
        data: (N, D) points.
        ks: candidate numbers of components (each at most N).
        criterion: "loo" (PSIS-LOO of a Bayesian mixture, see the module docstring) or "bic".
        covariance_type: "diag" (default), "spherical", "full" or "tied" (for full and tied the
            guide is Normal over the Cholesky factor of each precision matrix, log-diagonal:
            ``lvm_pyro.models.transforms``).
        prior: priors of the Bayesian mixture for LOO (default :func:`default_prior`).
        n_init: EM starts per K.
        steps, lr, num_samples: SVI steps and learning rate of the guide, and its draws (LOO).
        seed: seeds EM and SVI.
        rule: how LOO picks K. "one_se" (default): the smallest K whose elpd_loo is within
            one standard error of the difference from the best, since a gain smaller than
            its own noise is no evidence for the larger model; "max": the K of the highest
            elpd_loo. BIC always takes its minimum (its penalty already prefers small K).

    Example:
        >>> from lvm_pyro.data import make_mixture
        >>> x = make_mixture(300, 3, 2, seed=0, covariance_type="diag").x
        >>> select_components(x, (1, 2, 3, 4), criterion="bic", covariance_type="diag").best_k
        3
    """
    if rule not in RULES:
        raise ConfigurationError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    if criterion not in CRITERIA:
        raise ConfigurationError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    if covariance_type not in COVARIANCE_TYPES:
        raise ConfigurationError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )
    seed = check_seed(seed)
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 2):
        raise ConfigurationError(
            f"num_samples must be an integer >= 2 (LOO needs posterior draws), got {num_samples!r}"
        )
    if prior is not None and not isinstance(prior, GMMPrior):
        raise ConfigurationError(f"prior must be a GMMPrior or None, got {type(prior).__name__}")
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise ConfigurationError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ConfigurationError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    if len(set(ks)) != len(ks):
        raise ConfigurationError(f"ks has repeated values: {ks!r}")
    x = validate_data(data, name="data", dtype=torch.float64)
    if max(ks) > len(x):
        raise DataError(f"K={max(ks)} components is more than the {len(x)} data points: use smaller ks")
    store = pyro.get_param_store()
    estimators = {}
    for k in ks:
        with store.scope():
            estimators[int(k)] = GaussianMixture(
                int(k), covariance_type=covariance_type, n_init=n_init, random_state=seed
            ).fit(x)
    if criterion == "bic":
        scores = {k: float(est.bic(x)) for k, est in estimators.items()}
        return ComponentSelection("bic", min(scores, key=scores.get), scores, estimators=estimators)
    prior = default_prior(x) if prior is None else prior
    scores, ses, khats, idatas, pointwise = {}, {}, {}, {}, {}
    for k, est in estimators.items():
        with store.scope():
            gmm = GaussianMixtureModel(k, x.shape[1], covariance_type, prior=prior).to(x)
            gmm.set_parameters(weights=est.weights_, means=est.means_, covariances=est.covariances_)
            result = fit(gmm.model, x, guide=gmm.global_guide("normal"), objective="enum", steps=steps,
                         lr=lr, batch_size=len(x), progress=False, seed=seed, kl_warmup=0)
            idatas[k] = to_inference_data(result, x, num_samples=num_samples, posterior_predictive=False,
                                          seed=seed)
        elpd = loo(idatas[k])
        scores[k], ses[k] = float(elpd.elpd_loo), float(elpd.se)
        khats[k] = float(np.max(elpd.pareto_k))
        pointwise[k] = np.asarray(elpd.loo_i).reshape(-1)
    top = max(scores, key=scores.get)
    n = len(pointwise[top])
    dse = {k: float(np.sqrt(n) * np.std(pointwise[top] - pointwise[k])) for k in scores}
    best = top
    if rule == "one_se":
        best = min(k for k in scores if scores[top] - scores[k] <= dse[k])
    return ComponentSelection("loo", best, scores, ses, khats, estimators, idatas, dse)
