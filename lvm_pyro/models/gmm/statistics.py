"""Expected sufficient statistics of a Gaussian mixture, and the chunked kernels that compute
them: buffers reused across chunks of rows, and in-place column softmax / logsumexp.

Numerics: the closed-form E-step expands (x - mu)^T Lambda (x - mu) into products with the
features [x, x x^T] of x shifted by the data mean, so it costs one matrix product per chunk
and never forms an N x K x D block. The rounding of that expansion is about eps (|x - mean| /
sigma)^2 relative: negligible in float64 (scikit-learn's precision, the default of the
estimator); in float32 (eps ~ 1e-7, faster) it matters only for clusters hundreds of standard
deviations from the data mean. Responsibilities below exp(log(tiny) / 2) are rounded up to
that value so no subnormal numbers slow the CPU.

Speed on a CPU: a chunk's buffers (about 2 MiB) stay in cache across its passes; phi carries
a column of ones, so the constant term rides in the first matrix product and sum_n r_nk in
the second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lvm_pyro.errors import ConfigurationError

_CHUNK_BYTES = 2**21
#: at most this many chunks' partial statistics are held before they are summed (in order)
GROUP = 64


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


@dataclass
class GMMStatistics:
    """Expected sufficient statistics of a Gaussian mixture, additive over chunks of data.

    With r_nk = p(z_n = k | x_n), sample weights w_n (1 when not given) and x' = x - shift:
    ``nk`` = sum_n w_n r_nk, ``sx`` = sum_n w_n r_nk x'_n (K, D), ``sxx`` = sum_n w_n r_nk
    x'_n x'_n^T (K, D, D) for full, its diagonal (K, D) for diag, sum_n w_n r_nk |x'_n|^2
    (K,) for spherical and sum_n w_n x'_n x'_n^T (D, D) for tied. Shifting by the data mean
    keeps the expanded second moments accurate.

    Statistics with the same shift form a vector space: ``a + b`` (the statistics of the
    union of two sets of rows) and ``c * a`` (a scaled copy), which is what stochastic
    approximation (online EM) needs: s <- (1 - gamma) s + gamma s_batch.

    Example:
        >>> s = GMMStatistics(torch.zeros(1), torch.ones(2), torch.ones(2, 1), torch.ones(2, 1))
        >>> (0.5 * s + s).nk.tolist()
        [1.5, 1.5]
    """

    shift: torch.Tensor
    nk: torch.Tensor
    sx: torch.Tensor
    sxx: torch.Tensor

    def __add__(self, other: GMMStatistics) -> GMMStatistics:
        if not isinstance(other, GMMStatistics):
            return NotImplemented
        if other.shift is not self.shift and not torch.equal(other.shift, self.shift):
            raise ValueError("statistics with different shifts cannot be added: compute them with one shift")
        return GMMStatistics(self.shift, self.nk + other.nk, self.sx + other.sx, self.sxx + other.sxx)

    def __mul__(self, factor: float) -> GMMStatistics:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            return NotImplemented
        return GMMStatistics(self.shift, factor * self.nk, factor * self.sx, factor * self.sxx)

    __rmul__ = __mul__

    @property
    def n(self) -> float:
        """The (weighted) number of points: sum_k n_k."""
        return float(self.nk.sum())


@dataclass(frozen=True)
class Coefficients:
    """log p(x, z = k) = A_k . phi(x') (+ a per-row term for tied), x' = x - shift, with
    phi's last feature 1 so that A's last column (A is (K, F + 1)) is the constant term."""

    shift: torch.Tensor
    A: torch.Tensor
    tied_factor: torch.Tensor | None


class Workspace:
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


class Workspaces(dict):
    """One :class:`Workspace` per thread slot of ``run_chunks``, made on first use."""

    def __init__(self, x: torch.Tensor, rows: int, shape: tuple[int, int]) -> None:
        super().__init__()
        self._args = (x, rows, shape)

    def __missing__(self, slot: int) -> Workspace:
        work = self[slot] = Workspace(*self._args)
        return work


def exp_floor(dtype: torch.dtype) -> float:
    """exp(d) for d below this is exp(this): no subnormal numbers (slow on CPUs); the relative
    change of a sum of such terms is below K sqrt(tiny), far below the rounding error."""
    return 0.5 * math.log(torch.finfo(dtype).tiny)


def softmax_columns_(lj: torch.Tensor, top: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Unnormalized softmax over dim 0 of a (K, n) block, in place: top <- lj.amax(0), lj <-
    exp(max(lj - top, floor)); returns 1 / lj.sum(0), written into ``norm``."""
    torch.amax(lj, 0, out=top)
    lj.sub_(top).clamp_min_(exp_floor(lj.dtype)).exp_()
    return torch.sum(lj, 0, out=norm).reciprocal_()


def log_sum_exp_columns_(lj: torch.Tensor) -> torch.Tensor:
    """logsumexp over dim 0 of a (K, n) block, overwriting it (faster than torch.logsumexp)."""
    top = lj.amax(0)
    return lj.sub_(top).clamp_min_(exp_floor(lj.dtype)).exp_().sum(0).log_().add_(top)
