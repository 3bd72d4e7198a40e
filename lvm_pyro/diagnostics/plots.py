"""Figures of fits, mixtures, images and latent spaces, drawn headless with matplotlib.

Every function returns a ``matplotlib.figure.Figure`` made without pyplot (so nothing is
registered globally, nothing needs closing and no display is needed); save it with
``fig.savefig(path)``, or show it in a notebook by leaving it as a cell's value. Functions
taking ``ax=`` draw on that axes instead and return its figure. Inputs are tensors (any
device) or arrays; they are moved to the CPU here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from lvm_pyro.diagnostics.ppc import plot_ppc
from lvm_pyro.diagnostics.psis import KHAT_GOOD, KHAT_OK, PSISResult
from lvm_pyro.errors import ConfigurationError, DataError, DataTypeError

__all__ = [
    "covariance_ellipse",
    "plot_completions",
    "plot_khat",
    "plot_latent",
    "plot_latent_traversal",
    "plot_loss",
    "plot_mixture",
    "plot_ppc",
    "plot_reconstructions",
    "plot_samples",
]


def _array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"dtype {arr.dtype}")
        return arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise DataTypeError(f"{name} cannot be read as a numeric array ({exc}): pass real numbers") from exc


def _count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _figure(ax, figsize: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


# ------------------------------------------------------------------------------------------
# Training curves
# ------------------------------------------------------------------------------------------


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def _warmup_end(result, n_steps: int) -> int:
    """Steps of a fit result run with a KL weight beta < 1 (its warm-up), 0 without one."""
    betas = list(getattr(result, "betas", None) or [])
    if betas and len(betas) == n_steps:
        return next((i for i, b in enumerate(betas) if b >= 1.0), n_steps)
    config = getattr(result, "config", None) or {}
    warmup = float(config.get("kl_warmup") or 0.0)
    per_epoch = config.get("steps_per_epoch") or 0
    return int(min(warmup * per_epoch, n_steps)) if warmup > 0 and per_epoch else 0


def _keep_the_tail_in_view(ax, y: np.ndarray) -> None:
    """Where the first values lie far above the rest (EM's starting point, say), scale the axis
    to the rest and say where the start went, so the end of the curve stays readable."""
    rest = y[1:]
    low, high = float(np.nanmin(rest)), float(np.nanmax(rest))
    span = max(high - low, 1e-12)
    if not np.isfinite(y[0]) or y[0] <= high + 3 * span:
        return
    ax.set_ylim(low - 0.1 * span, high + 0.25 * span)
    ax.annotate(f"start: {y[0]:.4g} (off the scale)", (1, high + 0.15 * span), fontsize=9,
                xytext=(4, 0), textcoords="offset points", va="center")


def plot_loss(
    result=None,
    *,
    train: Sequence[float] | None = None,
    val: Sequence[float] | None = None,
    smooth: int | str = "auto",
    log_scale: bool = False,
    ax=None,
) -> Figure:
    """Loss curves: the training loss per data point per step and the validation loss per epoch.

    ``result`` is a ``fit`` result or an ``em`` result; or pass ``train`` (per step) and
    ``val`` (per epoch, spread over the steps) yourself. A fit's training loss is the
    negative ELBO per data point of each batch, and during a KL warm-up (steps with KL weight
    beta < 1, shaded) the negative *annealed* ELBO -(E_q[log p(x | z)] - beta KL): the axis
    and legend say which. Its validation loss is the negative ELBO (beta = 1) after each
    epoch. An em result shows the negative mean log-likelihood per point per iteration
    (exact). ``smooth``: moving-average window over steps ("auto": about 1/50 of the run).

    Example:
        >>> fig = plot_loss(train=[3.0, 2.0, 1.5, 1.4], val=[1.6, 1.5])
        >>> fig.axes[0].get_ylabel()
        'loss per point'
    """
    xlabel, ylabel, train_label, warm = "step", "loss per point", "train", 0
    if result is not None:
        if hasattr(result, "losses"):
            train = result.losses
            val = [-v for v in result.val_elbo] if getattr(result, "val_elbo", None) else None
            warm = _warmup_end(result, len(train))
            if warm:
                ylabel, train_label = "-(annealed) ELBO per point (nats)", "train: -annealed ELBO, then -ELBO"
                if warm >= len(train):
                    train_label = "train: -annealed ELBO"
            else:
                ylabel, train_label = "-ELBO per point (nats)", "train: -ELBO"
        elif hasattr(result, "log_likelihood"):
            train = [-v for v in result.log_likelihood]
            xlabel, ylabel, train_label = "EM iteration", "-log-likelihood per point (nats)", "train"
        else:
            raise ConfigurationError(
                f"plot_loss reads a fit or em result, got {type(result).__name__}: or pass train=[...]"
            )
    if train is None or len(train) == 0:
        raise DataError("plot_loss needs a non-empty training curve: pass a result or train=[...]")
    y = _array(train, "train").reshape(-1)
    fig, ax = _figure(ax, (6, 3.5))
    steps = np.arange(1, len(y) + 1)
    if warm:
        ax.axvspan(0.5, warm + 0.5, color="0.88", lw=0, label="KL warm-up (beta < 1)")
    window = max(len(y) // 50, 1) if smooth == "auto" else _count(smooth, "smooth ('auto' or a window)")
    if window > 1 and len(y) > window:
        ax.plot(steps, y, color="C0", alpha=0.25, lw=0.8)
        ax.plot(steps[window - 1:], _moving_average(y, window), color="C0", label=train_label)
    else:
        ax.plot(steps, y, color="C0", marker="o" if len(y) < 30 else None, label=train_label)
    if val is not None and len(val):
        v = _array(val, "val").reshape(-1)
        at = np.linspace(len(y) / len(v), len(y), len(v))
        ax.plot(at, v, color="C1", marker="o", ms=3, label="validation: -ELBO" if result is not None
                else "validation")
    if log_scale:
        ax.set_yscale("symlog")
    elif len(y) > 3:
        _keep_the_tail_in_view(ax, y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# ------------------------------------------------------------------------------------------
# Mixtures
# ------------------------------------------------------------------------------------------


def _full_covariances(cov: np.ndarray, k: int, d: int) -> np.ndarray:
    """(K, D, D) matrices from scikit-learn's full / tied / diag / spherical shapes."""
    if cov.shape == (k, d, d):
        return cov
    if cov.shape == (d, d):
        return np.broadcast_to(cov, (k, d, d))
    if cov.shape == (k, d):
        return np.stack([np.diag(c) for c in cov])
    if cov.shape == (k,):
        return cov[:, None, None] * np.eye(d)
    raise DataError(
        f"covariances of shape {cov.shape} fit no covariance type for K={k}, D={d}: pass (K, D, D) "
        f"full, (D, D) tied, (K, D) diag or (K,) spherical"
    )


def covariance_ellipse(mean, cov, n_std: float = 2.0, **kwargs) -> Ellipse:
    """The ellipse {x : (x - m)^T C^-1 (x - m) = n_std^2} of a 2-D Gaussian, from C = V diag(l) V^T.

    Example:
        >>> e = covariance_ellipse([0.0, 0.0], [[4.0, 0.0], [0.0, 1.0]], n_std=1.0)
        >>> round(e.width, 6), round(e.height, 6)
        (4.0, 2.0)
    """
    if isinstance(n_std, bool) or not isinstance(n_std, numbers.Real) or not 0 < n_std < math.inf:
        raise ConfigurationError(f"n_std must be a finite positive number, got {n_std!r}")
    m, c = _array(mean, "mean"), _array(cov, "cov")
    if m.shape != (2,) or c.shape != (2, 2):
        raise DataError(
            f"covariance_ellipse draws a 2-D Gaussian: mean has shape {m.shape} and cov {c.shape}, "
            "expected (2,) and (2, 2)"
        )
    if not (np.isfinite(m).all() and np.isfinite(c).all()):
        raise DataError("mean and cov must be finite (they hold NaN or inf)")
    vals, vecs = np.linalg.eigh(c)
    scale = float(np.abs(c).max())
    if vals[0] < -1e-5 * scale or not np.allclose(c, c.T, rtol=1e-5, atol=1e-6 * scale):
        raise DataError(f"cov is not a covariance matrix (symmetric positive semi-definite): {c.tolist()}")
    vals = np.clip(vals, 0.0, None)
    angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
    width, height = 2 * n_std * math.sqrt(vals[1]), 2 * n_std * math.sqrt(vals[0])
    return Ellipse(tuple(m), width, height, angle=angle, **kwargs)


def plot_mixture(
    x,
    means=None,
    covariances=None,
    weights=None,
    responsibilities=None,
    *,
    n_std: Sequence[float] = (1.0, 2.0),
    ax=None,
    title: str | None = None,
) -> Figure:
    """A 2-D Gaussian mixture: points coloured by responsibilities r_nk, covariance ellipses per component.

    Each point's colour is sum_k r_nk colour_k (a mixed colour for an uncertain point); each
    component is drawn at its mean with ellipses at ``n_std`` standard deviations, its
    opacity growing with its weight. ``means`` may instead be a fitted
    ``lvm_pyro.estimators.GaussianMixture`` (or any object with ``means_``, ``covariances_``,
    ``weights_`` and ``predict_proba``), or a ``GaussianMixtureModel``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 2))
        >>> fig = plot_mixture(x, [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]], [1.0])
        >>> len(fig.axes[0].patches)
        2
    """
    X = _array(x, "x")
    if X.ndim != 2 or X.shape[1] != 2:
        raise DataError(
            f"plot_mixture draws 2-D data, got x of shape {X.shape}: project it to two features first"
        )
    if not np.isfinite(X).all():
        bad = ~np.isfinite(X)
        raise DataError(
            f"x has {int(bad.sum())} NaN/inf value(s), the first at index "
            f"{[int(i) for i in np.argwhere(bad)[0]]}: drop or impute those rows"
        )
    if hasattr(means, "means_"):
        fitted = means
        means, covariances, weights = fitted.means_, fitted.covariances_, fitted.weights_
        if responsibilities is None:
            responsibilities = fitted.predict_proba(x)
    elif hasattr(means, "covariances") and hasattr(means, "loc"):
        gmm = means
        with torch.no_grad():
            means, covariances, weights = gmm.loc, gmm.covariances(), gmm.weights
            if responsibilities is None:
                xt = torch.as_tensor(X, dtype=gmm.loc.dtype, device=gmm.loc.device)
                responsibilities = gmm.posterior(xt)
    if means is None or covariances is None:
        raise ConfigurationError("plot_mixture needs the means and covariances, or a fitted mixture")
    mu = _array(means, "means")
    if mu.ndim != 2 or mu.shape[1] != 2:
        raise DataError(f"means have shape {mu.shape}: pass (K, 2) component means for 2-D data")
    k = mu.shape[0]
    cov = _full_covariances(_array(covariances, "covariances"), k, 2)
    w = np.full(k, 1.0 / k) if weights is None else _array(weights, "weights").reshape(-1)
    if w.shape != (k,):
        raise DataError(f"{w.size} weights for {k} components: pass one weight per component")
    palette = np.array([_tab10(i) for i in range(k)])
    fig, ax = _figure(ax, (5, 5))
    if responsibilities is not None:
        r = _array(responsibilities, "responsibilities")
        if r.shape != (len(X), k):
            raise DataError(f"responsibilities have shape {r.shape}, expected (N, K) = {(len(X), k)}")
        colours = np.clip(r @ palette, 0, 1)
    else:
        colours = np.full((len(X), 3), 0.35)
    ax.scatter(X[:, 0], X[:, 1], c=colours, s=10, alpha=0.8, linewidths=0)
    for j in range(k):
        for s in n_std:
            ax.add_patch(covariance_ellipse(mu[j], cov[j], s, fill=False, lw=2, color=palette[j],
                                            alpha=float(0.35 + 0.65 * w[j] / w.max())))
        ax.plot(*mu[j], marker="x", color="k", ms=8, mew=2)
        ax.annotate(f"{j}: w={w[j]:.2f}", mu[j], xytext=(5, 5), textcoords="offset points", fontsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title or f"Gaussian mixture, K={k}")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    return fig


def _tab10(i: int) -> np.ndarray:
    colours = [
        (0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
        (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5),
        (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
    ]
    return np.array(colours[i % len(colours)])


# ------------------------------------------------------------------------------------------
# Image grids
# ------------------------------------------------------------------------------------------


def _images(images, image_shape: Sequence[int] | None, name: str) -> np.ndarray:
    """(N, H, W) images from (N, H, W) or flat (N, D) with image_shape (default: square)."""
    arr = _array(images, name)
    if arr.ndim >= 1 and len(arr) == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}): pass at least one image")
    if not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        raise DataError(
            f"{name} has {int(bad.sum())} NaN/inf value(s), the first at index "
            f"{[int(i) for i in np.argwhere(bad)[0]]}: pass finite pixel values"
        )
    if arr.ndim == 3 and image_shape is None:
        return arr
    if arr.ndim < 2:
        raise DataError(f"{name} has shape {arr.shape}: pass (N, H, W) images or (N, D) with image_shape")
    flat = arr.reshape(len(arr), -1)
    if image_shape is None:
        side = math.isqrt(flat.shape[1])
        if side * side != flat.shape[1]:
            raise DataError(
                f"{name} has {flat.shape[1]} values per image, not a square: pass image_shape=(H, W)"
            )
        image_shape = (side, side)
    h, w = (int(s) for s in image_shape)
    if h * w != flat.shape[1]:
        raise DataError(f"{name} has {flat.shape[1]} values per image but image_shape={tuple(image_shape)}")
    return flat.reshape(len(arr), h, w)


def _grid_axes(fig: Figure, rows: int, cols: int):
    axes = fig.subplots(rows, cols, squeeze=False)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
        for spine in a.spines.values():
            spine.set_visible(False)
    return axes


def plot_samples(
    images,
    image_shape: Sequence[int] | None = None,
    *,
    ncols: int = 10,
    cmap: str = "gray_r",
    vmin: float | None = 0.0,
    vmax: float | None = None,
    title: str | None = None,
    size: float = 1.1,
) -> Figure:
    """A grid of images, e.g. samples x ~ p(x | z), z ~ p(z) from a generative model.

    ``images``: (N, H, W), or (N, D) with ``image_shape=(H, W)`` (default: square);
    ``size``: inches per image.

    Example:
        >>> import numpy as np
        >>> fig = plot_samples(np.random.default_rng(0).random((12, 64)), ncols=6)
        >>> len(fig.axes)
        12
    """
    ncols = _count(ncols, "ncols")
    imgs = _images(images, image_shape, "images")
    n = len(imgs)
    cols = max(1, min(ncols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(size * cols, size * rows + (0.4 if title else 0)), layout="constrained")
    axes = _grid_axes(fig, rows, cols)
    top = vmax if vmax is not None else max(float(imgs.max()), 1.0)
    for i, a in enumerate(axes.flat):
        if i < n:
            a.imshow(imgs[i], cmap=cmap, vmin=vmin, vmax=top, interpolation="nearest")
        else:
            a.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def plot_reconstructions(
    originals,
    reconstructions,
    image_shape: Sequence[int] | None = None,
    *,
    n: int = 10,
    cmap: str = "gray_r",
    title: str | None = None,
    size: float = 1.1,
) -> Figure:
    """Originals (top row of each pair) above their reconstructions E[x | z = E_q[z | x]];
    ``size``: inches per image.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((4, 64))
        >>> len(plot_reconstructions(x, x * 0.5, n=4).axes)
        8
    """
    n = _count(n, "n")
    a = _images(originals, image_shape, "originals")
    b = _images(reconstructions, image_shape, "reconstructions")
    if a.shape != b.shape:
        raise DataError(f"originals {a.shape} and reconstructions {b.shape} differ in shape")
    n = min(n, len(a))
    cols = min(n, 10)
    pair_rows = math.ceil(n / cols)
    fig = Figure(figsize=(size * cols, 2 * size * pair_rows + (0.4 if title else 0)), layout="constrained")
    axes = _grid_axes(fig, 2 * pair_rows, cols)
    top = max(float(a.max()), float(b.max()), 1.0)
    for i in range(pair_rows * cols):
        r, c = divmod(i, cols)
        for row, imgs in ((2 * r, a), (2 * r + 1, b)):
            if i < n:
                axes[row, c].imshow(imgs[i], cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
            else:
                axes[row, c].set_visible(False)
    for r in range(pair_rows):
        axes[2 * r, 0].set_ylabel("data", fontsize=10)
        axes[2 * r + 1, 0].set_ylabel("recon.", fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def plot_latent_traversal(
    decoder: Callable[[torch.Tensor], torch.Tensor],
    latent_dim: int,
    image_shape: Sequence[int] | None = None,
    *,
    z0=None,
    dims: Sequence[int] | None = None,
    values: Sequence[float] | None = None,
    cmap: str = "gray_r",
) -> Figure:
    """Latent traversal: row j decodes z0 + v e_j for each v in ``values`` (z0 = 0 and v from -3 to 3
    in 9 steps by default).

    ``decoder`` maps a (B, latent_dim) tensor to images (B, H, W) or (B, D) (e.g. a VAE's
    ``lambda z: vae.decode(z).mean``).

    Example:
        >>> import torch
        >>> fig = plot_latent_traversal(lambda z: torch.sigmoid(z @ torch.ones(2, 16)), 2, (4, 4))
        >>> len(fig.axes)
        18
    """
    if not callable(decoder):
        raise ConfigurationError(
            f"decoder must be a function from latent codes to images (e.g. lambda z: vae.decode(z).mean), "
            f"got {type(decoder).__name__}"
        )
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ConfigurationError(f"latent_dim must be a positive integer, got {latent_dim!r}")
    dims = list(range(min(latent_dim, 8))) if dims is None else list(dims)
    if any(not 0 <= d < latent_dim for d in dims):
        raise ConfigurationError(f"dims {dims} must lie in 0..{latent_dim - 1}")
    vals = [float(v) for v in (np.linspace(-3, 3, 9) if values is None else values)]
    base = torch.zeros(latent_dim) if z0 is None else torch.as_tensor(z0, dtype=torch.float32).reshape(-1)
    if base.numel() != latent_dim:
        raise DataError(f"z0 has {base.numel()} values but latent_dim={latent_dim}")
    z = base.repeat(len(dims) * len(vals), 1)
    for i, d in enumerate(dims):
        z[i * len(vals):(i + 1) * len(vals), d] += torch.tensor(vals)
    ref = _reference(decoder)
    if ref is not None:
        z = z.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        out = decoder(z)
    imgs = _images(out, image_shape, "decoded images")
    fig = Figure(figsize=(1.0 * len(vals), 1.0 * len(dims) + 0.4), layout="constrained")
    axes = _grid_axes(fig, len(dims), len(vals))
    top = max(float(imgs.max()), 1.0)
    for i, d in enumerate(dims):
        axes[i, 0].set_ylabel(f"z[{d}]", fontsize=8)
        for j, v in enumerate(vals):
            axes[i, j].imshow(imgs[i * len(vals) + j], cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
            if i == len(dims) - 1:
                axes[i, j].set_xlabel(f"{v:+.1f}", fontsize=8)
    fig.suptitle("latent traversal")
    return fig


def _reference(fn) -> torch.Tensor | None:
    """A parameter of the module behind ``fn`` (a module, or a bound method of one), if any."""
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        return next(iter(owner.parameters()), None)
    return None


def plot_completions(
    tops,
    completions,
    image_shape: Sequence[int],
    *,
    truth=None,
    n: int = 8,
    cmap: str = "gray_r",
) -> Figure:
    """Conditional completions (CVAE): each row is a top half x, then bottom halves y ~ p(y | x).

    ``tops``: (N, h * W) or (N, h, W); ``completions``: S per top, (N, S, D) or (N, S, rows, W),
    or one per top, (N, D): bottom halves (D = (H - h) * W) or full images (D = H * W);
    ``truth``: the true bottoms or full images (N, D), drawn first in each row. A red line
    marks the boundary between given and completed.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> fig = plot_completions(rng.random((3, 32)), rng.random((3, 4, 32)), (8, 8))
        >>> len(fig.axes)
        12
    """
    h_full, w = (int(s) for s in image_shape)
    top = _array(tops, "tops")
    top = top.reshape(len(top), -1)
    if top.shape[1] % w or top.shape[1] >= h_full * w:
        raise DataError(
            f"tops have {top.shape[1]} values per example: pass whole rows of an image of shape "
            f"{(h_full, w)} (fewer than {h_full * w} values)"
        )
    h = top.shape[1] // w
    comp = _array(completions, "completions")
    if comp.ndim not in (2, 3, 4):
        raise DataError(
            f"completions have shape {comp.shape}: pass (N, D), (N, S, D) or (N, S, rows, W)"
        )
    comp = comp.reshape(len(comp), 1, -1) if comp.ndim == 2 else comp.reshape(comp.shape[:2] + (-1,))
    if len(comp) != len(top):
        raise DataError(f"{len(comp)} sets of completions for {len(top)} tops: pass one per top")

    def full(bottom: np.ndarray, i: int) -> np.ndarray:
        if bottom.size == h_full * w:
            return bottom.reshape(h_full, w)
        if bottom.size != (h_full - h) * w:
            raise DataError(
                f"a completion has {bottom.size} values: pass bottoms of {(h_full - h) * w} or full images "
                f"of {h_full * w}"
            )
        return np.concatenate([top[i], bottom]).reshape(h_full, w)

    truth_arr = None if truth is None else _array(truth, "truth").reshape(len(top), -1)
    n = min(n, len(top))
    cols = comp.shape[1] + (truth_arr is not None)
    fig = Figure(figsize=(1.0 * cols, 1.0 * n + 0.4), layout="constrained")
    axes = _grid_axes(fig, n, cols)
    for i in range(n):
        panels = ([full(truth_arr[i], i)] if truth_arr is not None else []) + [
            full(comp[i, s], i) for s in range(comp.shape[1])
        ]
        for j, img in enumerate(panels):
            top_value = max(float(img.max()), 1.0)
            axes[i, j].imshow(img, cmap=cmap, vmin=0, vmax=top_value, interpolation="nearest")
            axes[i, j].axhline(h - 0.5, color="red", lw=1)
    if truth_arr is not None:
        axes[0, 0].set_title("truth", fontsize=8)
    fig.suptitle("conditional completions")
    return fig


# ------------------------------------------------------------------------------------------
# Latent space and diagnostics
# ------------------------------------------------------------------------------------------


def plot_latent(
    z,
    labels=None,
    *,
    ax=None,
    title: str | None = None,
    max_points: int = 5000,
) -> Figure:
    """Latent codes (e.g. E_q[z | x]) in 2-D, coloured by label; with more than two dims the
    first two principal components are shown.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> fig = plot_latent(rng.normal(size=(100, 4)), rng.integers(0, 3, 100))
        >>> fig.axes[0].get_xlabel()
        'PC 1'
    """
    max_points = _count(max_points, "max_points")
    Z = _array(z, "z")
    if Z.ndim != 2 or Z.shape[1] < 1:
        raise DataError(f"z has shape {Z.shape}: pass latent codes of shape (N, latent_dim)")
    y = None if labels is None else _array(labels, "labels").reshape(-1)
    if y is not None and len(y) != len(Z):
        raise DataError(f"{len(y)} labels for {len(Z)} latent codes: pass one label per code")
    if len(Z) > max_points:
        keep = np.random.default_rng(0).choice(len(Z), max_points, replace=False)
        Z, y = Z[keep], None if y is None else y[keep]
    if Z.shape[1] == 1:
        Z = np.concatenate([Z, np.zeros_like(Z)], 1)
        names = ("z[0]", "")
    elif Z.shape[1] == 2:
        names = ("z[0]", "z[1]")
    else:
        centred = Z - Z.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        Z = centred @ vt[:2].T
        names = ("PC 1", "PC 2")
    fig, ax = _figure(ax, (5.5, 5))
    if y is None:
        ax.scatter(Z[:, 0], Z[:, 1], s=6, alpha=0.6)
    else:
        classes = np.unique(y)
        if len(classes) <= 20 and np.all(classes == np.round(classes)):
            for i, c in enumerate(classes):
                pick = y == c
                ax.scatter(Z[pick, 0], Z[pick, 1], s=6, alpha=0.7, color=_tab10(i), label=f"{int(c)}")
            ax.legend(markerscale=3, title="label", loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            points = ax.scatter(Z[:, 0], Z[:, 1], s=6, c=y, cmap="viridis", alpha=0.7)
            fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("latent space" if title is None else title)
    return fig


def plot_khat(khat, *, ax=None, title: str | None = None) -> Figure:
    """Pareto k-hat per data point against the 0.5 (good) and 0.7 (bad) thresholds.

    ``khat``: a :class:`~lvm_pyro.diagnostics.psis.PSISResult` (its per-point k-hats), a
    :class:`~lvm_pyro.diagnostics.loo.LOOResult` from ``loo`` or an ArviZ ELPDData (its
    ``pareto_k``), or an array.

    Example:
        >>> import numpy as np
        >>> fig = plot_khat(np.array([0.1, 0.6, 0.9]))
        >>> len(fig.axes[0].collections) >= 1
        True
    """
    if isinstance(khat, PSISResult):
        if khat.khat_per_point is None:
            raise ConfigurationError(
                "this PSIS result has no per-point k-hats (the guide has no local latents): plot "
                "az.loo(...) instead, or report result.khat"
            )
        values = khat.khat_per_point
    elif hasattr(khat, "pareto_k"):
        values = khat.pareto_k
    else:
        values = khat
    k = _array(values, "khat")
    if k.ndim != 1:
        raise DataError(f"khat has shape {k.shape}: pass one k-hat per data point, a 1-D array")
    shown = np.where(np.isfinite(k), k, np.nan)
    fig, ax = _figure(ax, (6, 3.5))
    colours = np.where(k < KHAT_GOOD, "C2", np.where(k < KHAT_OK, "C1", "C3"))
    idx = np.arange(len(k))
    ax.scatter(idx, shown, c=colours, s=12)
    low = np.isneginf(k)
    if low.any():
        floor = np.nanmin(shown) if np.isfinite(shown).any() else 0.0
        ax.scatter(idx[low], np.full(low.sum(), min(floor, 0.0)), marker="v", c="C2", s=12,
                   label="-inf (constant weights)")
    for level, colour, label in ((KHAT_GOOD, "C1", "0.5"), (KHAT_OK, "C3", "0.7")):
        ax.axhline(level, color=colour, ls="--", lw=1, label=f"k = {label}")
    ax.set_xlabel("data point")
    ax.set_ylabel("Pareto k-hat")
    ax.set_title(f"PSIS k-hat: {int((k >= KHAT_OK).sum())} of {len(k)} points above {KHAT_OK}"
                 if title is None else title)
    ax.legend()
    return fig
