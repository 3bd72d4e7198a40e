"""Small torch building blocks for encoders and decoders.

Plain ``torch.nn`` modules: a model registers them with ``pyro.module`` (or holds them as
attributes of a ``PyroModule``), so they carry no Pyro logic of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Sequential):
    """A multilayer perceptron: Linear -> activation, repeated, then a final Linear.

    ``MLP(64, [256, 256], 16)`` maps (..., 64) to (..., 16) through two hidden layers.

    Example:
        >>> MLP(4, [8], 2)(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: type[nn.Module] = nn.Softplus,
    ) -> None:
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:], strict=False):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)


class DiagNormalHead(nn.Module):
    """Maps features to the mean and standard deviation of a diagonal Gaussian.

    scale = softplus(raw) + min_scale, so the scale stays positive and bounded away from 0.

    Example:
        >>> loc, scale = DiagNormalHead(5, 2)(torch.zeros(3, 5))
        >>> bool((scale > 0).all())
        True
    """

    def __init__(self, in_features: int, out_features: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.loc = nn.Linear(in_features, out_features)
        self.raw_scale = nn.Linear(in_features, out_features)
        self.min_scale = min_scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), F.softplus(self.raw_scale(h)) + self.min_scale


class CholeskyNormalHead(nn.Module):
    """Maps features to the mean and lower-triangular Cholesky factor L of a full Gaussian.

    The diagonal of L is softplus(raw) + min_scale; below it the entries are free, so
    z = loc + L @ eps covers every positive-definite covariance L L^T.

    Example:
        >>> loc, L = CholeskyNormalHead(5, 3)(torch.zeros(2, 5))
        >>> L.shape
        torch.Size([2, 3, 3])
    """

    def __init__(self, in_features: int, out_features: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.dim = out_features
        self.loc = nn.Linear(in_features, out_features)
        self.tril = nn.Linear(in_features, out_features * (out_features + 1) // 2)
        rows, cols = torch.tril_indices(out_features, out_features)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.min_scale = min_scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.tril(h)
        L = flat.new_zeros(*flat.shape[:-1], self.dim, self.dim)
        L[..., self.rows, self.cols] = flat
        diag = F.softplus(torch.diagonal(L, dim1=-2, dim2=-1)) + self.min_scale
        return self.loc(h), torch.tril(L, diagonal=-1) + torch.diag_embed(diag)
