"""k-means++ seeding and Lloyd's k-means, chunked over rows, with optional sample weights.

A sample weight w_n counts row n as w_n copies: k-means++ draws seeds with probability
proportional to w_n D(x_n)^2, and Lloyd's centers are weighted means, minimizing
sum_n w_n |x_n - c_{label_n}|^2.
"""

from __future__ import annotations

import math

import torch

from lvm_pyro.models.gmm.statistics import chunk_rows


def as_generator(gen: torch.Generator | None) -> torch.Generator:
    """``gen``, or a CPU generator seeded from torch's global generator."""
    if gen is not None:
        return gen
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
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding: each new seed is the best of 2 + log K candidates drawn with
    probability proportional to w_n D(x_n)^2, D the distance to the nearest seed so far (w_n
    = 1 without weights; the first seed is drawn with probability proportional to w_n), the
    best being the one minimizing sum_n w_n D(x_n)^2. Returns the indices of the seeds in x.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
        >>> idx = kmeans_plusplus(x, 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(int(x[i, 0] > 5) for i in idx)
        [0, 1]
    """
    gen = as_generator(generator)
    n = len(x)
    rows = chunk_rows(max(n_clusters, 8), x.element_size(), chunk_size)
    trials = 2 + int(math.log(n_clusters))
    xc = x - x.mean(0)
    w = None if sample_weight is None else sample_weight.to(torch.float64).cpu()
    if w is None:
        first = int(torch.randint(n, (), generator=gen))
    else:
        first = int(torch.multinomial(w, 1, generator=gen))
    seeds = [first]
    closest = torch.cat([_sq_distances(c, xc[first : first + 1])[:, 0] for c in xc.split(rows)])
    for _ in range(1, n_clusters):
        weights = closest.double().cpu()
        if w is not None:
            weights = weights * w
        if float(weights.sum()) <= 0:
            weights = torch.ones(n, dtype=torch.float64) if w is None else w.clone()
        cand = torch.multinomial(weights, trials, replacement=True, generator=gen).to(x.device)
        dist_to_cand = torch.cat(
            [
                torch.minimum(cl[:, None], _sq_distances(c, xc[cand]))
                for c, cl in zip(xc.split(rows), closest.split(rows))
            ]
        )
        if w is None:
            potential = dist_to_cand.sum(0, dtype=torch.float64)
        else:
            potential = w.to(x.device) @ dist_to_cand.double()
        best = int(potential.argmin())
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
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k-means++ seeds: minimize sum_n w_n |x_n - c_{label_n}|^2 (w_n = 1
    without weights). Stops when the centers move less than tol x (mean feature variance).
    Returns (centers (K, D), labels (N,)).

    Example:
        >>> x = torch.tensor([[0.0], [0.2], [10.0], [10.2]])
        >>> centers, labels = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(round(c, 3) for c in centers[:, 0].tolist())
        [0.1, 10.1]
    """
    mean = x.mean(0)
    xc = x - mean
    rows = chunk_rows(max(n_clusters, 8), x.element_size(), chunk_size)
    seeds = kmeans_plusplus(x, n_clusters, generator=generator, chunk_size=chunk_size,
                            sample_weight=sample_weight)
    centers = xc[seeds]
    threshold = tol * float(xc.var(0, unbiased=False).mean())
    w = None if sample_weight is None else sample_weight.to(xc)
    for _ in range(max_iter):
        labels = torch.cat([_sq_distances(c, centers).argmin(1) for c in xc.split(rows)])
        if w is None:
            sums = torch.zeros_like(centers).index_add_(0, labels, xc)
            counts = torch.bincount(labels, minlength=n_clusters).to(xc.dtype)
        else:
            sums = torch.zeros_like(centers).index_add_(0, labels, xc * w[:, None])
            counts = torch.zeros(n_clusters, dtype=xc.dtype, device=xc.device).index_add_(0, labels, w)
        filled = counts[:, None] > 0
        new = torch.where(filled, sums / torch.where(filled, counts[:, None], 1), centers)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= threshold:
            break
    labels = torch.cat([_sq_distances(c, centers).argmin(1) for c in xc.split(rows)])
    return centers + mean, labels

