"""A bijection onto positive-definite matrices, so guides can put a Normal over covariances.

torch registers ``transform_to(constraints.positive_definite)`` but no ``biject_to`` for it
(its ``PositiveDefiniteTransform`` maps D x D matrices, not a space of the same dimension),
so autoguides such as ``AutoNormal`` (and NUTS) cannot place a posterior over a
Wishart-distributed precision matrix. :class:`CholeskyVectorToPositiveDefinite` maps the
D(D+1)/2 unconstrained numbers of a lower-triangular matrix, with its diagonal exponentiated,
to L L^T: a smooth bijection R^{D(D+1)/2} -> {positive-definite D x D} with a closed-form
Jacobian.

Importing ``lvm_pyro`` registers nothing in torch's ``biject_to`` registry. Two explicit routes:

- :func:`bijective_positive_definite` returns a positive-definite constraint of this
  module's own type, whose ``biject_to`` is the bijection above (registered for that type the
  first time it is asked for; torch's own constraints keep their behaviour). The Gaussian
  mixture's Wishart and flat precision sites use it, which is how
  ``GaussianMixtureModel.global_guide``, NUTS and PSIS-LOO work for full and tied
  covariances. :class:`BijectiveWishart` is a Wishart with that support, for a user's own
  model.
- :func:`positive_definite_bijection` is a context manager that registers the bijection for
  torch's ``constraints.positive_definite`` for the duration of a ``with`` block and restores
  the registry on exit.

Example:
    >>> from torch.distributions import biject_to
    >>> support = bijective_positive_definite()
    >>> type(biject_to(support)).__name__
    'CholeskyVectorToPositiveDefinite'
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pyro.distributions as dist
import torch
from torch.distributions import biject_to, constraints, transform_to
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


def _bijection(constraint) -> Transform:
    return CholeskyVectorToPositiveDefinite()


def _positive_definite_transform(constraint) -> Transform:
    return transform_to(constraints.positive_definite)


class BijectivePositiveDefinite(type(constraints.positive_definite)):
    """Positive-definite matrices, as ``constraints.positive_definite``, with
    ``biject_to(this) = CholeskyVectorToPositiveDefinite()``; made by
    :func:`bijective_positive_definite`."""


_SUPPORT = BijectivePositiveDefinite()
_LOCK = threading.Lock()


def bijective_positive_definite() -> BijectivePositiveDefinite:
    """The positive-definite constraint whose ``biject_to`` is
    :class:`CholeskyVectorToPositiveDefinite`. The first call registers that bijection for
    this module's constraint type only (no torch constraint changes behaviour)."""
    with _LOCK:
        if BijectivePositiveDefinite not in biject_to._registry:
            biject_to.register(BijectivePositiveDefinite, _bijection)
        if BijectivePositiveDefinite not in transform_to._registry:  # AutoDelta, pyro.param
            transform_to.register(BijectivePositiveDefinite, _positive_definite_transform)
    return _SUPPORT


class BijectiveWishart(dist.Wishart):
    """Pyro's Wishart with the support :func:`bijective_positive_definite`, so autoguides and
    NUTS can transform its site (the distribution is otherwise the same).

    Example:
        >>> w = BijectiveWishart(torch.tensor(3.0), torch.eye(2))
        >>> type(biject_to(w.support)).__name__
        'CholeskyVectorToPositiveDefinite'
    """

    @property
    def support(self) -> BijectivePositiveDefinite:
        return bijective_positive_definite()


@contextmanager
def positive_definite_bijection() -> Iterator[None]:
    """Within the block, ``biject_to(constraints.positive_definite)`` is
    :class:`CholeskyVectorToPositiveDefinite` (for a model written with a plain
    ``dist.Wishart``); the registry is restored on exit.

    Example:
        >>> with positive_definite_bijection():
        ...     type(biject_to(constraints.positive_definite)).__name__
        'CholeskyVectorToPositiveDefinite'
    """
    key = type(constraints.positive_definite)
    with _LOCK:
        had, previous = key in biject_to._registry, biject_to._registry.get(key)
        biject_to.register(key, _bijection)
    try:
        yield
    finally:
        with _LOCK:
            if had:
                biject_to._registry[key] = previous
            else:
                biject_to._registry.pop(key, None)
