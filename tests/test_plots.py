"""Every figure renders to a PNG that is not blank; geometry of the covariance ellipse; bad input."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pyro
import pytest
import torch
from matplotlib.figure import Figure
from models_for_tests import LocalGaussian, normal_normal_guide, normal_normal_model

import lvm_pyro
from lvm_pyro.data import load_digits, make_mixture
from lvm_pyro.diagnostics import plots
from lvm_pyro.diagnostics.arviz import loo, psis_khat, to_inference_data
from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.estimators import GaussianMixture
from lvm_pyro.infer.em import em
from lvm_pyro.models.gmm import GaussianMixtureModel
from lvm_pyro.models.vae import VAE


def assert_not_blank(fig: Figure, path) -> None:
    assert isinstance(fig, Figure)
    fig.savefig(path, dpi=60)
    img = matplotlib.image.imread(path)[..., :3]
    assert img.std() > 0.01
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1


@pytest.fixture(scope="module")
def digits():
    return load_digits(binarize=8)


@pytest.fixture(scope="module")
def vae():
    pyro.set_rng_seed(0)
    return VAE((64,), latent_dim=3, hidden=(16,))


def test_loss_curves_from_a_fit_result_and_from_arrays(tmp_path):
    x = torch.randn(40) + 1
    result = lvm_pyro.fit((normal_normal_model, normal_normal_guide), x, steps=20, lr=0.05, batch_size=20,
                          val_data=x[:10], progress=False, seed=0)
    fig = plots.plot_loss(result)
    assert [line.get_label() for line in fig.axes[0].lines][-2:] == ["train: -ELBO", "validation: -ELBO"]
    assert fig.axes[0].get_ylabel() == "-ELBO per point (nats)"
    assert_not_blank(fig, tmp_path / "loss.png")
    assert_not_blank(plots.plot_loss(train=np.linspace(5, 1, 200), val=[4, 3, 2]), tmp_path / "arr.png")
    data = make_mixture(100, 2, 2, seed=0)
    history = em(GaussianMixtureModel(2, 2), data.x, max_iter=10, seed=0, device="cpu")
    fig = plots.plot_loss(history)
    assert fig.axes[0].get_xlabel() == "EM iteration"
    assert_not_blank(fig, tmp_path / "em.png")


def test_mixture_with_ellipses_and_responsibilities(tmp_path):
    data = make_mixture(200, 3, 2, seed=0, covariance_type="full")
    gm = GaussianMixture(3, random_state=0).fit(data.x)
    fig = plots.plot_mixture(data.x, gm)
    assert len(fig.axes[0].patches) == 3 * 2
    assert_not_blank(fig, tmp_path / "mixture.png")
    diag = plots.plot_mixture(data.x.numpy(), data.means, torch.ones(3, 2), [0.2, 0.3, 0.5])
    assert_not_blank(diag, tmp_path / "diag.png")


def test_covariance_ellipse_axes_come_from_the_eigendecomposition():
    angle = math.radians(30)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    cov = rot @ np.diag([9.0, 1.0]) @ rot.T
    e = plots.covariance_ellipse([1.0, 2.0], cov, n_std=2.0)
    assert e.width == pytest.approx(12.0) and e.height == pytest.approx(4.0)
    assert e.angle % 180 == pytest.approx(30.0)
    assert e.center == pytest.approx((1.0, 2.0))


def test_samples_reconstructions_latent_and_traversal_of_a_vae(tmp_path, digits, vae):
    x, y = digits.test.x[:200], digits.test.y[:200]
    assert_not_blank(plots.plot_samples(vae.sample(20, mean=True), (8, 8)), tmp_path / "samples.png")
    assert_not_blank(plots.plot_samples(x[:16].reshape(16, 8, 8)), tmp_path / "images.png")
    assert_not_blank(plots.plot_reconstructions(x[:10], vae.reconstruct(x[:10])), tmp_path / "recon.png")
    latent = plots.plot_latent(vae.encode(x).mean, y)
    assert latent.axes[0].get_xlabel() == "PC 1"
    assert len(latent.axes[0].get_legend().get_texts()) == len(np.unique(y))
    assert_not_blank(latent, tmp_path / "latent.png")
    fig = plots.plot_latent_traversal(lambda z: vae.decode(z).mean, 3, (8, 8), values=[-2, 0, 2])
    assert len(fig.axes) == 3 * 3
    assert_not_blank(fig, tmp_path / "traversal.png")


def test_conditional_completions(tmp_path, digits):
    x = digits.test.x[:4]
    tops, bottoms = x[:, :32], x[:, 32:]
    completions = torch.rand(4, 3, 32).round()
    fig = plots.plot_completions(tops, completions, (8, 8), truth=bottoms)
    assert len(fig.axes) == 4 * 4
    assert_not_blank(fig, tmp_path / "completions.png")


def test_ppc_and_khat_figures(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(30, 2) * math.sqrt(2.0)
    model = LocalGaussian(dim=2)
    idata = to_inference_data(model, x, num_samples=40, seed=0)
    assert_not_blank(plots.plot_ppc(idata, num_pp_samples=20), tmp_path / "ppc.png")
    assert_not_blank(plots.plot_khat(psis_khat(model, x, num_samples=100, seed=0)), tmp_path / "khat.png")
    assert_not_blank(plots.plot_khat(loo(idata)), tmp_path / "loo_khat.png")


def test_bad_input_names_the_fix():
    with pytest.raises(DataError, match="2-D"):
        plots.plot_mixture(np.zeros((5, 3)), np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(DataError, match="covariance type"):
        plots.plot_mixture(np.zeros((5, 2)), np.zeros((2, 2)), np.ones((3, 3)))
    with pytest.raises(DataError, match="image_shape"):
        plots.plot_samples(np.zeros((4, 10)))
    with pytest.raises(DataError, match="shape"):
        plots.plot_reconstructions(np.zeros((4, 64)), np.zeros((4, 16)))
    with pytest.raises(ConfigurationError, match="fit or em result"):
        plots.plot_loss(object())
    with pytest.raises(ConfigurationError, match="posterior_predictive"):
        plots.plot_ppc("not inference data")
    with pytest.raises(DataError, match="labels"):
        plots.plot_latent(np.zeros((5, 2)), [0, 1])
