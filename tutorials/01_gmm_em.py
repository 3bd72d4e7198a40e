# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Latent-variable models and the Gaussian mixture, fitted by EM
#
# A latent-variable model explains each observation x by an unobserved cause z:
#
#     p(x, z) = p(z) p(x | z),        p(x) = sum_z p(z) p(x | z).
#
# The Gaussian mixture is the smallest interesting example. The cause is a cluster label
# z in {1, ..., K} drawn with probabilities w, and the point is drawn from that cluster's
# Gaussian: z ~ Categorical(w), x | z = k ~ N(mu_k, Sigma_k). Both pieces are simple; their
# marginal p(x) is a multi-modal density that neither could describe alone.
#
# Learning means maximizing the log-likelihood sum_n log p(x_n). The sum over z sits
# *inside* the logarithm, so the maximizer has no closed form. This tutorial shows how
# expectation-maximization (EM) gets around that, why each EM iteration can never lower
# the log-likelihood, and checks the library's EM against gradient ascent (`fit` with the
# `"enum"` estimator) and against scikit-learn.
#
# Runtime: about 25 s in full mode, about 15 s with `LVM_PYRO_SMOKE=1` (2 CPU cores).

# %%
import warnings

import numpy as np
import torch
from _common import SMOKE, runtime, save
from matplotlib.figure import Figure
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from lvm_pyro import fit
from lvm_pyro.data import make_mixture
from lvm_pyro.diagnostics import plots
from lvm_pyro.estimators import GaussianMixture
from lvm_pyro.infer.em import em
from lvm_pyro.models.gmm import GaussianMixtureModel

# %% [markdown]
# ## The data
#
# Three overlapping Gaussian clusters in the plane, drawn by `make_mixture`, which also
# returns the truth that generated them (weights, means, covariances and each point's z).
# We work in float64 so that "never decreases" can be checked to rounding error.

# %%
N = 300 if SMOKE else 600
mix = make_mixture(N, 3, 2, seed=3, separation=2.5, covariance_type="full", dtype=torch.float64)
x = mix.x
print(f"{len(x)} points; true weights {np.round(mix.weights.numpy(), 3)}")

# %% [markdown]
# ## Why a lower bound helps
#
# For any distribution q(z) over the label of a point x, Jensen's inequality (log is
# concave, so log E[Y] >= E[log Y]) gives
#
#     log p(x) = log sum_z q(z) p(x, z) / q(z)  >=  sum_z q(z) log [p(x, z) / q(z)] = ELBO(q, theta).
#
# The difference is exactly a Kullback-Leibler divergence:
#
#     log p(x) - ELBO(q, theta) = KL(q(z) || p(z | x, theta)) >= 0,
#
# so the bound is *tight* when q is the posterior p(z | x, theta) (the "responsibilities"
# of the clusters for x). EM alternates two moves on the same function ELBO(q, theta):
#
# - **E-step**: set q to the posterior under the current theta. The bound now touches
#   log p(x): ELBO = log-likelihood.
# - **M-step**: hold q fixed and maximize ELBO over theta. For a Gaussian mixture this is a
#   weighted mean and covariance per cluster, in closed form.
#
# Chain the two: log p(x | theta_old) = ELBO(q_old, theta_old) <= ELBO(q_old, theta_new) <=
# log p(x | theta_new). Each iteration raises the bound, and the bound never exceeds the
# log-likelihood, so the log-likelihood can never fall.
#
# Let us watch those three numbers for a few iterations. `em(..., max_iter=1)` runs one
# E-step and one M-step on the model's current parameters; `gmm.posterior(x)` is the
# E-step's q and `gmm.log_joint(x)` is log p(x, z = k) for every point and cluster.


# %%
def mean_elbo(q: torch.Tensor, model: GaussianMixtureModel, data: torch.Tensor) -> float:
    """(1/N) sum_n sum_k q_nk [log p(x_n, z_n = k) - log q_nk], with 0 log 0 = 0."""
    log_q = torch.where(q > 0, q.log(), torch.zeros_like(q))
    return float((q * (model.log_joint(data) - log_q)).sum(1).mean())


gmm = GaussianMixtureModel(3, 2, "full").double()
em(gmm, x, init="random", max_iter=0, seed=0)  # random responsibilities, one M-step
print(" iter   log p(x|old)   ELBO(q_old, new)   log p(x|new)")
for it in range(1, 6):
    q_old = gmm.posterior(x)
    ll_old = float(gmm.log_prob(x).mean())
    assert abs(mean_elbo(q_old, gmm, x) - ll_old) < 1e-10  # the E-step makes the bound tight
    em(gmm, x, init="current", max_iter=1, canonical_order=False)
    bound_new = mean_elbo(q_old, gmm, x)
    ll_new = float(gmm.log_prob(x).mean())
    print(f"{it:5d}   {ll_old:12.5f}   {bound_new:16.5f}   {ll_new:12.5f}")
    assert ll_old <= bound_new + 1e-12 <= ll_new + 2e-12

# %% [markdown]
# The middle column is the bound after the M-step with the *old* q: it is already above
# the old log-likelihood (the M-step's gain), and the new E-step lifts it again to the new
# log-likelihood (the gap it closes is KL(q_old || p(z | x, theta_new))).
#
# ## A full EM run
#
# Now the real thing: `em` from random responsibilities, `tol=0` so it runs every
# iteration. `result.log_likelihood[i]` is the mean log-likelihood after i M-steps.

# %%
gmm = GaussianMixtureModel(3, 2, "full").double()
result = em(gmm, x, init="random", seed=0, tol=0.0, max_iter=60 if SMOKE else 200)
ll = np.array(result.log_likelihood)
steps_up = np.diff(ll)
print(f"EM: {result.n_iter} iterations, log-likelihood {ll[0]:.4f} -> {ll[-1]:.6f} per point")
print(f"smallest change between iterations: {steps_up.min():.2e} (never negative beyond rounding)")
assert steps_up.min() >= -1e-9, "the EM log-likelihood decreased"
truth = float(torch.logsumexp(
    torch.stack([
        mix.weights[k].log()
        + torch.distributions.MultivariateNormal(mix.means[k], mix.covariances[k]).log_prob(x)
        for k in range(3)
    ]),
    0,
).mean())
print(f"log-likelihood of the true parameters: {truth:.4f} "
      "(at convergence EM's is higher: it fits this sample)")
if not SMOKE:
    assert ll[-1] >= truth - 1e-6

# %% [markdown]
# The colours below are the responsibilities p(z = k | x) mixed as RGB: a point between
# two clusters gets an in-between colour, which is the soft clustering EM works with.
# The ellipses are one and two standard deviations of each fitted component.

# %%
fig = Figure(figsize=(10, 4.2), layout="constrained")
ax_mix, ax_ll = fig.subplots(1, 2)
plots.plot_mixture(x, gmm, ax=ax_mix, title="EM fit: responsibilities and components")
plots.plot_loss(result, ax=ax_ll)
ax_ll.set_title("EM: -log-likelihood per point, never increasing")
save(fig, "01_gmm_em.png")

# %% [markdown]
# ## EM against gradient ascent on the marginal likelihood
#
# The model is also an ordinary Pyro program: `GaussianMixtureModel.model` draws z from
# `Categorical(w)` with `infer={"enumerate": "parallel"}`. With `objective="enum"`, `fit`
# sums z out exactly (`TraceEnum_ELBO`), so its loss is -log p(x) itself, and Adam climbs
# the log-likelihood by gradients. Both start from the same k-means initialization.

# %%
start = GaussianMixtureModel(3, 2, "full").double()
em(start, x, init="kmeans", max_iter=0, seed=1)  # k-means labels, then one M-step
by_em, by_grad = GaussianMixtureModel(3, 2, "full").double(), GaussianMixtureModel(3, 2, "full").double()
by_em.load_state_dict(start.state_dict())
by_grad.load_state_dict(start.state_dict())

em_run = em(by_em, x, init="current", tol=1e-8, max_iter=500)
grad_steps = 300 if SMOKE else 1000
grad_run = fit(by_grad, x, objective="enum", steps=grad_steps, lr=0.05, batch_size=len(x),
               progress=False, seed=0)
em_ll = np.array(em_run.log_likelihood)
grad_ll = -np.array(grad_run.losses)  # flat priors: -log p(x) per point, before each update
em_final, grad_final = em_ll[-1], float(by_grad.log_prob(x).mean())
em_close = int(np.flatnonzero(em_ll >= em_final - 1e-3)[0])
grad_close = np.flatnonzero(grad_ll >= em_final - 1e-3)
grad_down = int((np.diff(grad_ll) < -1e-9).sum())
print(f"EM:        log-lik {em_final:.5f}, within 1e-3 of it after {em_close} iterations, "
      f"{em_run.n_iter} to converge, {em_run.wall_time:.2f} s")
print(f"Adam/enum: log-lik {grad_final:.5f}, within 1e-3 of EM after "
      f"{int(grad_close[0]) if len(grad_close) else 'more than ' + str(grad_steps)} steps, "
      f"{grad_steps} steps in {grad_run.wall_time:.2f} s")
print(f"steps on which Adam lowered the log-likelihood: {grad_down} of {grad_steps - 1}; EM: "
      f"{int((np.diff(em_ll) < -1e-9).sum())} of {len(em_ll) - 1}")
assert np.diff(em_ll).min() >= -1e-9
if not SMOKE:
    assert abs(grad_final - em_final) < 5e-3, "from the same start both should find the same maximum"

# %%
fig = Figure(figsize=(6, 3.5), layout="constrained")
ax = fig.subplots()
ax.plot(np.arange(len(em_ll)), em_ll, "o-", ms=3, label="EM (iteration)")
ax.plot(np.arange(len(grad_ll)), grad_ll, label="Adam on log p(x), z enumerated (step)")
ax.set_xscale("symlog")
ax.set_ylim(em_ll[0] - 0.02, em_final + 0.01)
ax.set_xlabel("iteration / step")
ax.set_ylabel("mean log-likelihood")
ax.legend()
save(fig, "01_em_vs_gradient.png")

# %% [markdown]
# From a good start both reach the same maximum. The differences are in what each step
# costs and guarantees. An EM iteration is a few weighted sums and needs no learning rate,
# and it can never lower the likelihood. A gradient step backpropagates through the
# enumerated program, needs a step size (too large and it oscillates, too small and it
# crawls), and nothing stops it from going downhill for a while, as the count above shows.
# Gradients win when there is no closed-form M-step, which is why the rest of these
# tutorials use `fit`.
#
# ## Against scikit-learn
#
# `lvm_pyro.estimators.GaussianMixture` wraps the same model and `em` in scikit-learn's
# interface (same constructor arguments, `fit / predict / predict_proba / score / sample /
# bic`). On the same data both libraries should reach the same maximum.

# %%
X = x.numpy()
settings = dict(n_components=3, covariance_type="full", tol=1e-6, max_iter=500, n_init=3, random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    ours = GaussianMixture(**settings).fit(X)
    theirs = SklearnGaussianMixture(**settings).fit(X)
print(f"mean log-likelihood: lvm_pyro {ours.score(X):.6f}   scikit-learn {theirs.score(X):.6f}")
print(f"BIC:                 lvm_pyro {ours.bic(X):.2f}   scikit-learn {theirs.bic(X):.2f}")
order = np.argsort(theirs.means_[:, 0])
print("means (sorted):\n", np.round(ours.means_[np.argsort(ours.means_[:, 0])], 4), "\n",
      np.round(theirs.means_[order], 4))
assert abs(ours.score(X) - theirs.score(X)) < 1e-4
print(f"best of 3 k-means starts: {ours.score(X):.4f}; the single random start of the full EM run "
      f"above: {ll[-1]:.4f}")

# %% [markdown]
# EM only promises that the likelihood never falls, not that it reaches the global
# maximum: where it ends depends on where it starts. That is why the estimator starts from
# k-means++ (a good guess of the clusters) and keeps the best of `n_init` runs.

# %% [markdown]
# ## The three everyday tasks of a fitted latent-variable model
#
# - **Generation**: draw z from its prior (or choose it), then x ~ p(x | z).
# - **MAP estimation of z**: the most probable cause, argmax_z p(z | x) = argmax_z p(x, z)
#   (p(x) does not depend on z): a hard clustering.
# - **Inference**: the whole posterior p(z | x): a soft clustering. For a mixture it is a
#   K-way table by Bayes' rule; for the deep models of the later tutorials it is
#   intractable and we will approximate it.

# %%
new_points, labels = ours.sample(4, component=0)
print("four points generated from component 0:\n", np.round(new_points, 3))
probe = X[:5]
print("MAP cluster of five points:", ours.predict(probe))
print("their posteriors p(z | x):\n", np.round(ours.predict_proba(probe), 3))

# %%
print("\nKey numbers")
print(f"  EM log-likelihood per point: {ll[0]:.4f} -> {ll[-1]:.4f} in {result.n_iter} iterations, "
      f"min step {steps_up.min():.1e}")
print(f"  EM vs Adam (enum) from one k-means start: {em_final:.5f} vs {grad_final:.5f}; "
      f"EM within 1e-3 after {em_close} iterations ({em_run.wall_time:.2f} s), "
      f"Adam's {grad_steps} steps {grad_run.wall_time:.1f} s, {grad_down} downhill")
print(f"  lvm_pyro vs scikit-learn score: {ours.score(X):.6f} vs {theirs.score(X):.6f}")
print(f"  runtime {runtime()}")
