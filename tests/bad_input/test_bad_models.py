"""Bad arguments to the library's model constructors: VAE, HierarchicalVAE, ConditionalVAE,
ConditionalBaseline, MixturePriorVAE, SigmoidBeliefNet, BlackBoxVI, GaussianMixtureModel, GMMPrior."""

from __future__ import annotations

import pytest
import torch
from harness import Case, run_case

from lvm_pyro import (
    VAE,
    BlackBoxVI,
    ConditionalBaseline,
    ConditionalVAE,
    GaussianMixtureModel,
    GMMPrior,
    HierarchicalVAE,
    MixturePriorVAE,
    SigmoidBeliefNet,
    errors,
)

CE = errors.ConfigurationError
SMALL = {"hidden": (4,)}
NAN = float("nan")


def small_vae() -> VAE:
    return VAE((6,), latent_dim=2, hidden=(4,))


def bbvi_wrong_rows():
    bb = BlackBoxVI(small_vae(), num_data=4)
    return bb.with_index(torch.zeros(3, 6))


def bbvi_float_index():
    bb = BlackBoxVI(small_vae(), num_data=3)
    return bb.local_posterior(torch.tensor([0.0, 1.0]))


def bbvi_index_out_of_range():
    bb = BlackBoxVI(small_vae(), num_data=3)
    return bb.local_posterior(torch.tensor([0, 5]))


CASES = [
    # --- VAE --------------------------------------------------------------------------------
    Case("vae-input-shape-0", lambda: VAE(0, **SMALL), CE, r"input_shape"),
    Case("vae-input-shape-empty", lambda: VAE((), **SMALL), CE, r"input_shape"),
    Case("vae-input-shape-negative", lambda: VAE((8, -1), **SMALL), CE, r"input_shape"),
    Case("vae-input-shape-string", lambda: VAE("64", **SMALL), CE, r"input_shape"),
    Case("vae-input-shape-float", lambda: VAE((6.5,), **SMALL), CE, r"input_shape"),
    Case("vae-latent-dim-0", lambda: VAE((6,), latent_dim=0, **SMALL), CE, r"latent_dim"),
    Case("vae-latent-dim-negative", lambda: VAE((6,), latent_dim=-2, **SMALL), CE, r"latent_dim"),
    Case("vae-latent-dim-float", lambda: VAE((6,), latent_dim=2.5, **SMALL), CE, r"latent_dim"),
    Case("vae-latent-dim-nan", lambda: VAE((6,), latent_dim=NAN, **SMALL), CE, r"latent_dim"),
    Case("vae-latent-dim-bool", lambda: VAE((6,), latent_dim=True, **SMALL), CE, r"latent_dim"),
    Case("vae-hidden-int", lambda: VAE((6,), hidden=256), CE, r"hidden"),
    Case("vae-hidden-zero-layer", lambda: VAE((6,), hidden=(0,)), CE, r"hidden"),
    Case("vae-hidden-float-layer", lambda: VAE((6,), hidden=(4.5,)), CE, r"hidden"),
    Case("vae-hidden-bool-layer", lambda: VAE((6,), hidden=(True,)), CE, r"hidden"),
    Case("vae-hidden-string", lambda: VAE((6,), hidden="256"), CE, r"hidden"),
    Case("vae-unknown-likelihood", lambda: VAE((6,), likelihood="poisson", **SMALL), CE, r"likelihood"),
    Case("vae-unknown-encoder", lambda: VAE((6,), encoder="lowrank", **SMALL), CE, r"encoder"),
    Case(
        "vae-gaussian-scale-negative",
        lambda: VAE((6,), likelihood="gaussian", gaussian_scale=-1.0, **SMALL),
        CE,
        r"gaussian_scale",
    ),
    Case(
        "vae-gaussian-scale-nan",
        lambda: VAE((6,), likelihood="gaussian", gaussian_scale=NAN, **SMALL),
        CE,
        r"gaussian_scale",
    ),
    Case(
        "vae-gaussian-scale-inf",
        lambda: VAE((6,), likelihood="gaussian", gaussian_scale=float("inf"), **SMALL),
        CE,
        r"gaussian_scale",
    ),
    Case(
        "vae-gaussian-scale-unknown-word",
        lambda: VAE((6,), likelihood="gaussian", gaussian_scale="fixed", **SMALL),
        CE,
        r"gaussian_scale",
    ),
    Case("vae-n-levels-1", lambda: VAE((6,), likelihood="categorical", n_levels=1, **SMALL), CE, r"n_levels"),
    Case(
        "vae-n-levels-float",
        lambda: VAE((6,), likelihood="categorical", n_levels=3.5, **SMALL),
        CE,
        r"n_levels",
    ),
    Case("vae-activation-string", lambda: VAE((6,), activation="relu", **SMALL), CE, r"activation"),
    Case(
        "vae-activation-instance", lambda: VAE((6,), activation=torch.nn.ReLU(), **SMALL), CE, r"activation"
    ),
    # --- HierarchicalVAE --------------------------------------------------------------------
    Case("hvae-one-layer", lambda: HierarchicalVAE((6,), latent_dims=(4,), **SMALL), CE, r"latent_dims"),
    Case("hvae-latent-dims-int", lambda: HierarchicalVAE((6,), latent_dims=4, **SMALL), CE, r"latent_dims"),
    Case(
        "hvae-latent-dims-zero",
        lambda: HierarchicalVAE((6,), latent_dims=(4, 0), **SMALL),
        CE,
        r"latent_dims",
    ),
    Case(
        "hvae-layer-hidden-negative",
        lambda: HierarchicalVAE((6,), latent_dims=(4, 2), layer_hidden=(-1,), **SMALL),
        CE,
        r"layer_hidden",
    ),
    Case(
        "hvae-unknown-guide",
        lambda: HierarchicalVAE((6,), latent_dims=(4, 2), guide="topdown", **SMALL),
        CE,
        r"guide",
    ),
    # --- ConditionalVAE / ConditionalBaseline -------------------------------------------------
    Case(
        "cvae-both-conditions",
        lambda: ConditionalVAE((6,), condition_shape=(3,), n_classes=4, **SMALL),
        CE,
        r"exactly one",
    ),
    Case("cvae-no-condition", lambda: ConditionalVAE((6,), **SMALL), CE, r"condition_shape|n_classes"),
    Case("cvae-n-classes-0", lambda: ConditionalVAE((6,), n_classes=0, **SMALL), CE, r"n_classes"),
    Case(
        "cvae-condition-shape-0",
        lambda: ConditionalVAE((6,), condition_shape=0, **SMALL),
        CE,
        r"condition_shape",
    ),
    Case(
        "cvae-latent-dim-0",
        lambda: ConditionalVAE((6,), n_classes=3, latent_dim=0, **SMALL),
        CE,
        r"latent_dim",
    ),
    Case(
        "cvae-prior-hidden-int",
        lambda: ConditionalVAE((6,), n_classes=3, prior_hidden=8, **SMALL),
        CE,
        r"prior_hidden",
    ),
    Case(
        "baseline-no-condition", lambda: ConditionalBaseline((6,), **SMALL), CE, r"condition_shape|n_classes"
    ),
    Case(
        "baseline-unknown-likelihood",
        lambda: ConditionalBaseline((6,), n_classes=2, likelihood="beta", **SMALL),
        CE,
        r"likelihood",
    ),
    # --- MixturePriorVAE --------------------------------------------------------------------
    Case(
        "mixvae-n-components-0",
        lambda: MixturePriorVAE((6,), latent_dim=2, n_components=0, **SMALL),
        CE,
        r"n_components",
    ),
    Case(
        "mixvae-n-components-float",
        lambda: MixturePriorVAE((6,), latent_dim=2, n_components=2.5, **SMALL),
        CE,
        r"n_components",
    ),
    Case(
        "mixvae-min-scale-1",
        lambda: MixturePriorVAE((6,), latent_dim=2, n_components=2, min_scale=1.0, **SMALL),
        CE,
        r"min_scale",
    ),
    Case(
        "mixvae-min-scale-negative",
        lambda: MixturePriorVAE((6,), latent_dim=2, n_components=2, min_scale=-0.1, **SMALL),
        CE,
        r"min_scale",
    ),
    Case(
        "mixvae-enumerate-component-string",
        lambda: MixturePriorVAE((6,), latent_dim=2, n_components=2, enumerate_component="yes", **SMALL),
        CE,
        r"enumerate_component",
    ),
    # --- SigmoidBeliefNet ---------------------------------------------------------------------
    Case("sbn-latent-dim-0", lambda: SigmoidBeliefNet((6,), latent_dim=0), CE, r"latent_dim"),
    Case(
        "sbn-encoder-hidden-int",
        lambda: SigmoidBeliefNet((6,), latent_dim=2, encoder_hidden=8),
        CE,
        r"encoder_hidden",
    ),
    Case(
        "sbn-unknown-likelihood",
        lambda: SigmoidBeliefNet((6,), latent_dim=2, likelihood="binary"),
        CE,
        r"likelihood",
    ),
    Case(
        "sbn-learn-prior-string",
        lambda: SigmoidBeliefNet((6,), latent_dim=2, learn_prior="no"),
        CE,
        r"learn_prior",
    ),
    # --- BlackBoxVI ---------------------------------------------------------------------------
    Case("bbvi-not-a-vae", lambda: BlackBoxVI("vae", num_data=3), CE, r"VAE"),
    Case("bbvi-num-data-0", lambda: BlackBoxVI(small_vae(), num_data=0), CE, r"num_data"),
    Case("bbvi-num-data-float", lambda: BlackBoxVI(small_vae(), num_data=3.0), CE, r"num_data"),
    Case(
        "bbvi-min-scale-negative",
        lambda: BlackBoxVI(small_vae(), num_data=3, min_scale=-1.0),
        CE,
        r"min_scale",
    ),
    Case(
        "bbvi-train-decoder-string",
        lambda: BlackBoxVI(small_vae(), num_data=3, train_decoder="false"),
        CE,
        r"train_decoder",
    ),
    Case("bbvi-with-index-wrong-rows", bbvi_wrong_rows, errors.DataError, r"num_data|rows"),
    Case("bbvi-float-index", bbvi_float_index, errors.DataError, r"index"),
    Case("bbvi-index-out-of-range", bbvi_index_out_of_range, errors.DataError, r"index|rows"),
    # --- GaussianMixtureModel / GMMPrior -------------------------------------------------------
    Case("gmm-n-components-0", lambda: GaussianMixtureModel(0, 2), CE, r"n_components"),
    Case("gmm-n-features-negative", lambda: GaussianMixtureModel(2, -1), CE, r"n_features"),
    Case("gmm-n-components-float", lambda: GaussianMixtureModel(2.5, 2), CE, r"n_components"),
    Case("gmm-unknown-covariance", lambda: GaussianMixtureModel(2, 2, "diagonal"), CE, r"covariance_type"),
    Case("gmm-reg-covar-negative", lambda: GaussianMixtureModel(2, 2, reg_covar=-1e-3), CE, r"reg_covar"),
    Case("gmm-reg-covar-nan", lambda: GaussianMixtureModel(2, 2, reg_covar=NAN), CE, r"reg_covar"),
    Case("gmm-reg-covar-string", lambda: GaussianMixtureModel(2, 2, reg_covar="1e-6"), CE, r"reg_covar"),
    Case("gmm-min-count-negative", lambda: GaussianMixtureModel(2, 2, min_count=-1.0), CE, r"min_count"),
    Case(
        "gmm-prior-wrong-type",
        lambda: GaussianMixtureModel(2, 2, prior={"mean_scale": 1.0}),
        CE,
        r"prior|GMMPrior",
    ),
    Case(
        "gmm-prior-wishart-df-too-small",
        lambda: GaussianMixtureModel(
            2, 3, "full", prior=GMMPrior(weight_concentration=1.0, mean_scale=1.0, precision_df=1.0)
        ),
        CE,
        r"precision_df",
    ),
    Case(
        "gmm-prior-mean-loc-length",
        lambda: GaussianMixtureModel(2, 3, prior=GMMPrior(mean_loc=(0.0, 1.0))),
        CE,
        r"mean_loc",
    ),
    Case("gmmprior-negative-scale", lambda: GMMPrior(mean_scale=-1.0), CE, r"mean_scale"),
    Case(
        "gmmprior-nan-concentration", lambda: GMMPrior(weight_concentration=NAN), CE, r"weight_concentration"
    ),
    Case("gmmprior-string-scale", lambda: GMMPrior(mean_scale="wide"), CE, r"mean_scale"),
    Case("gmmprior-zero-covariance-scale", lambda: GMMPrior(covariance_scale=0.0), CE, r"covariance_scale"),
    Case("gmmprior-mean-loc-nan", lambda: GMMPrior(mean_loc=NAN), CE, r"mean_loc"),
    Case("gmmprior-mean-loc-string", lambda: GMMPrior(mean_loc="origin"), CE, r"mean_loc"),
    Case(
        "gmm-global-guide-unknown-family",
        lambda: GaussianMixtureModel(2, 1, "diag").global_guide("laplace"),
        CE,
        r"family",
    ),
    Case(
        "gmm-global-guide-improper-prior",
        lambda: GaussianMixtureModel(2, 1, "diag").global_guide(),
        CE,
        r"prior",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_models(case: Case) -> None:
    run_case(case)
