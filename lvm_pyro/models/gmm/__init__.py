"""The Gaussian mixture as a Pyro model, with closed-form EM.

- :mod:`~lvm_pyro.models.gmm.model`: :class:`GaussianMixtureModel`, the Pyro program and the
  closed-form E-step / M-step (the statistics protocol of ``em`` and ``online_em``);
- :mod:`~lvm_pyro.models.gmm.covariance`: one object per covariance type ("full", "tied",
  "diag", "spherical") holding everything that differs between them;
- :mod:`~lvm_pyro.models.gmm.statistics`: :class:`GMMStatistics` and the chunked kernels;
- :mod:`~lvm_pyro.models.gmm.kmeans`: k-means++ seeding and Lloyd's k-means (weighted);
- :mod:`~lvm_pyro.models.gmm.prior`: :class:`GMMPrior`.

The command line's settings for the mixture live in :mod:`lvm_pyro.models.registry`.
"""

from lvm_pyro.models.gmm.covariance import COVARIANCE_TYPES, COVARIANCES, Covariance
from lvm_pyro.models.gmm.kmeans import kmeans, kmeans_plusplus
from lvm_pyro.models.gmm.model import GLOBAL_SITES, INIT_METHODS, GaussianMixtureModel, check_sample_weight
from lvm_pyro.models.gmm.prior import GMMPrior
from lvm_pyro.models.gmm.statistics import GMMStatistics, chunk_rows

__all__ = [
    "COVARIANCES",
    "COVARIANCE_TYPES",
    "GLOBAL_SITES",
    "INIT_METHODS",
    "Covariance",
    "GMMPrior",
    "GMMStatistics",
    "GaussianMixtureModel",
    "check_sample_weight",
    "chunk_rows",
    "kmeans",
    "kmeans_plusplus",
]
