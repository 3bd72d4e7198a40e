"""A bijection onto positive-definite matrices, so guides can put a Normal over covariances.

torch registers ``transform_to(constraints.positive_definite)`` but no ``biject_to`` for it
(its ``PositiveDefiniteTransform`` maps D x D matrices, not a space of the same dimension),
so autoguides such as ``AutoNormal`` cannot place a posterior over a Wishart-distributed
precision matrix. :class:`CholeskyVectorToPositiveDefinite` maps the D(D+1)/2 unconstrained
numbers of a lower-triangular matrix, with its diagonal exponentiated, to L L^T: a smooth
bijection R^{D(D+1)/2} -> {positive-definite D x D} with a closed-form Jacobian. Importing
``lvm_pyro`` registers it as ``biject_to(constraints.positive_definite)``, which is how
``GaussianMixtureModel.global_guide`` and PSIS-LOO work for full and tied covariances.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform


def _size(n_free: int) -> int:
    d = int(round((math.sqrt(8 * n_free + 1) - 1) / 2))
    if d * (d + 1) // 2 != n_free:
        raise ValueError(f"{n_free} numbers do not fill a lower-triangular matrix")
    return d


class CholeskyVectorToPositiveDefinite(Transform):
    """v (..., D(D+1)/2) -> L L^T (..., D, D), with L lower triangular, filled row by row
    from v (``torch.tril_indices`` order) and its diagonal exponentiated.

    log |det dvech(L L^T) / dv| = D log 2 + sum_i (D - i + 2) log L_ii (i = 1..D): the
    Cholesky map's Jacobian 2^D prod_i L_ii^(D - i + 1) times the exponential's prod_i L_ii.

    Example:
        >>> t = CholeskyVectorToPositiveDefinite()
        >>> m = t(torch.zeros(3))
        >>> m.tolist(), t.inv(m).tolist()
        ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0, 0.0])
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.positive_definite
    bijective = True

    def __eq__(self, other) -> bool:
        return isinstance(other, CholeskyVectorToPositiveDefinite)

    @staticmethod
    def _indices(d: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, cols = torch.tril_indices(d, d, device=device)
        return rows, cols, rows == cols

    def _cholesky(self, v: torch.Tensor) -> torch.Tensor:
        d = _size(v.shape[-1])
        rows, cols, on_diag = self._indices(d, v.device)
        entries = torch.where(on_diag, v.exp(), v)
        L = v.new_zeros(*v.shape[:-1], d, d)
        L[..., rows, cols] = entries
        return L

    def _call(self, v: torch.Tensor) -> torch.Tensor:
        L = self._cholesky(v)
        return L @ L.mT

    def _inverse(self, m: torch.Tensor) -> torch.Tensor:
        L = torch.linalg.cholesky(m)
        d = m.shape[-1]
        rows, cols, on_diag = self._indices(d, m.device)
        entries = L[..., rows, cols]
        return torch.where(on_diag, entries.log(), entries)

    def log_abs_det_jacobian(self, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        d = _size(v.shape[-1])
        rows, _, on_diag = self._indices(d, v.device)
        log_diag = v[..., on_diag]  # log L_ii, i = 0..d-1 in order
        powers = (d + 1 - torch.arange(d, device=v.device)).to(v.dtype)  # D - i + 2, i = 1..D
        return d * math.log(2.0) + (powers * log_diag).sum(-1)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        d = _size(shape[-1])
        return torch.Size((*shape[:-1], d, d))

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        d = shape[-1]
        return torch.Size((*shape[:-2], d * (d + 1) // 2))


@biject_to.register(constraints.positive_definite)
def _positive_definite_bijection(constraint) -> Transform:
    return CholeskyVectorToPositiveDefinite()
