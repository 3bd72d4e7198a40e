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
# # 2. The ELBO, its KL gap, and importance-sampled log-likelihoods
#
# For most latent-variable models log p(x) = log integral p(x, z) dz cannot be computed,
# and neither can the posterior p(z | x) = p(x, z) / p(x). Variational inference replaces
# both with one quantity we *can* estimate, the evidence lower bound
#
#     ELBO(q) = E_{z ~ q}[log p(x, z) - log q(z)].
#
# Two facts make it the workhorse of the rest of these tutorials:
#
# 1. **It is a lower bound.** Write log p(x) = log E_q[p(x, z) / q(z)]. The log of an
#    average is at least the average of the logs (Jensen's inequality, log is concave), so
#    log p(x) >= E_q[log p(x, z) / q(z)] = ELBO(q).
# 2. **The gap is the KL divergence to the posterior.** Substituting
#    p(x, z) = p(z | x) p(x) inside the expectation gives, for every q,
#
#        log p(x) = ELBO(q) + KL(q(z) || p(z | x)).
#
#    log p(x) does not depend on q, so raising the ELBO over q is the same as pulling q
#    towards the posterior. The bound is tight exactly when q is the posterior.
#
# To *see* these identities we need a model where every term has a closed form: a linear
# Gaussian model (probabilistic PCA with a fixed loading matrix),
#
#     z ~ N(0, I_2),    x | z ~ N(A z, s^2 I_D),
#
# whose posterior is Gaussian, p(z | x) = N(m(x), S) with precision S^-1 = I + A^T A / s^2
# and mean m(x) = S A^T x / s^2, and whose marginal is p(x) = N(0, A A^T + s^2 I).
#
# Runtime: about 20 s in full mode, about 15 s with `LVM_PYRO_SMOKE=1` (2 CPU cores).

# %%
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from _common import SMOKE, runtime, save
from matplotlib.figure import Figure
from torch.distributions import constraints, kl_divergence

from lvm_pyro import elbo, fit
from lvm_pyro.diagnostics import plots
from lvm_pyro.infer.evaluate import log_likelihood

torch.set_default_dtype(torch.float64)


# %% [markdown]
# ## The model, as a plain Pyro program
#
# The library needs no special class for this: a `model(x)` and a `guide(x)` function with
# the data inside `pyro.plate("data", len(x))` are enough for `fit`, `elbo` and
# `log_likelihood`.

# %%
D, L, NOISE = 10, 2, 0.3
g = torch.Generator().manual_seed(0)
first = torch.randn(D, generator=g)
A = torch.stack([first, 0.8 * first + 0.4 * torch.randn(D, generator=g)], 1)  # nearly collinear columns
N = 100 if SMOKE else 200
x = (torch.randn(N, L, generator=g) @ A.T + NOISE * torch.randn(N, D, generator=g))

post_precision = torch.eye(L) + A.T @ A / NOISE**2
post_cov = torch.linalg.inv(post_precision)
encode_exact = post_cov @ A.T / NOISE**2  # m(x) = encode_exact @ x
marginal = dist.MultivariateNormal(torch.zeros(D), A @ A.T + NOISE**2 * torch.eye(D))
log_px = marginal.log_prob(x)  # exact log p(x_n), shape (N,)
print(f"exact mean log p(x) = {float(log_px.mean()):.4f} nats")
print(f"posterior standard deviations {post_cov.diagonal().sqrt().numpy().round(4)} "
      f"(prior: 1), correlation {float(post_cov[0, 1] / post_cov.diagonal().prod().sqrt()):+.3f}")


def model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), L), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ A.T, NOISE).to_event(1), obs=x)


def exact_guide(x):
    """q(z | x) = p(z | x): the true posterior."""
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.MultivariateNormal(x @ encode_exact.T, post_cov))


def prior_guide(x):
    """q(z | x) = p(z): ignores x entirely."""
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x.new_zeros(len(x), L), 1.0).to_event(1))


def meanfield_guide(x):
    """q(z | x) = N(C x, diag(r^2)): a linear encoder and independent coordinates."""
    C = pyro.param("C", x.new_zeros(L, D))
    r = pyro.param("r", x.new_ones(L), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x @ C.T, r).to_event(1))


# %% [markdown]
# ## log p(x) = ELBO + KL, term by term
#
# For a Gaussian q = N(mu, V) every piece of the ELBO is an expectation of a quadratic, so
# it has a closed form:
#
#     E_q[log p(x | z)] = log N(x; A mu, s^2 I) - tr(A V A^T) / (2 s^2)
#     E_q[log p(z)]     = log N(mu; 0, I) - tr(V) / 2
#     -E_q[log q(z)]    = (1/2) log det(2 pi e V)          (the entropy of q)
#
# and KL(q || p(z | x)) between two Gaussians is `torch.distributions.kl_divergence`.
# We check the identity for three very different q: the prior, the best q that treats the
# two coordinates of z as independent ("mean-field", its optimum is known in closed form:
# mean m(x) and variances 1 / (S^-1)_ii), and the posterior itself.


# %%
def closed_form_elbo(mu: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """ELBO(x_n) for q_n = N(mu_n, V), per data point."""
    expected_loglik = (dist.Normal(mu @ A.T, NOISE).log_prob(x).sum(-1)
                       - torch.trace(A @ V @ A.T) / (2 * NOISE**2))
    expected_logprior = dist.Normal(0.0, 1.0).log_prob(mu).sum(-1) - torch.trace(V) / 2
    entropy = 0.5 * torch.logdet(2 * torch.pi * torch.e * V)
    return expected_loglik + expected_logprior + entropy


posterior = dist.MultivariateNormal(x @ encode_exact.T, post_cov)
candidates = {
    "prior N(0, I)": (torch.zeros(N, L), torch.eye(L)),
    "best mean-field": (x @ encode_exact.T, torch.diag(1 / post_precision.diagonal())),
    "exact posterior": (x @ encode_exact.T, post_cov),
}
print(f"{'q':>18} {'ELBO':>11} {'KL(q||post)':>12} {'ELBO + KL':>11} {'log p(x)':>10}  max error")
identity_errors = {}
for name, (mu, V) in candidates.items():
    bound = closed_form_elbo(mu, V)
    kl = kl_divergence(dist.MultivariateNormal(mu, V), posterior)
    identity_errors[name] = float((bound + kl - log_px).abs().max())
    print(f"{name:>18} {float(bound.mean()):11.4f} {float(kl.mean()):12.4f} "
          f"{float((bound + kl).mean()):11.4f} {float(log_px.mean()):10.4f}  {identity_errors[name]:.1e}")
    assert identity_errors[name] < 1e-4, "log p(x) = ELBO + KL must hold for every q"
best_meanfield = dist.MultivariateNormal(*candidates["best mean-field"])
meanfield_gap = float(kl_divergence(best_meanfield, posterior).mean())
print(f"closed-form KL of the best mean-field q: 0.5 (sum log diag(P) - log det P) = "
      f"{0.5 * float(post_precision.diagonal().log().sum() - torch.logdet(post_precision)):.4f}")

# %% [markdown]
# The identity holds to rounding error for all three. The prior is a terrible q (its KL to
# the narrow posterior is large); the mean-field q leaves a small, irreducible gap because
# the posterior's two coordinates are correlated and q cannot express that; the posterior
# closes the gap entirely.
#
# ## Finding the mean-field q by stochastic optimization
#
# In practice we do not know the best q; we climb the ELBO. `fit` does this with Monte
# Carlo gradients. Here only the guide has parameters (the encoder C and the scales r);
# the model is fixed, so every step pulls q towards the posterior.

# %%
pyro.clear_param_store()
run = fit(model, x, guide=meanfield_guide, objective="meanfield", steps=400 if SMOKE else 3000,
          lr=0.02, batch_size=N, progress=False, seed=0)
best_r = (1 / post_precision.diagonal()).sqrt()
print(f"fitted scales r = {pyro.param('r').detach().numpy().round(4)}, "
      f"closed-form optimum {best_r.numpy().round(4)}")
fitted_mu = (x @ pyro.param("C").detach().T)
fitted_V = torch.diag(pyro.param("r").detach() ** 2)
fitted_elbo = float(closed_form_elbo(fitted_mu, fitted_V).mean())
mc_elbo = elbo(model, x, guide=meanfield_guide, num_particles=2000, seed=0)
print(f"ELBO of the fitted q: closed form {fitted_elbo:.4f}, lvm_pyro.elbo (2000 samples) {mc_elbo:.4f}")
print(f"its gap to log p(x): {float(log_px.mean()) - fitted_elbo:.4f} (optimum {meanfield_gap:.4f})")
assert abs(mc_elbo - fitted_elbo) < 0.05
if not SMOKE:
    torch.testing.assert_close(pyro.param("r").detach(), best_r, rtol=0.05, atol=0.0)

# %% [markdown]
# ## Estimating log p(x) by sampling
#
# The ELBO bounds log p(x); sometimes we want log p(x) itself, for instance to compare two
# models. Importance sampling gives it: for any proposal q that covers the posterior,
#
#     p(x) = E_{z ~ q}[p(x, z) / q(z)]  ~=  (1/k) sum_j w_j,   w_j = p(x, z_j) / q(z_j).
#
# Taking the log of this average gives the importance-weighted bound
# L_k = E[log (1/k) sum_j w_j]. It is a lower bound for every k (Jensen again), L_1 is the
# ELBO, and L_k rises to log p(x) as k grows. How fast depends on the proposal:
#
# - **the prior** (q = p(z), so w_j = p(x | z_j)): simple, but almost every z_j lands where
#   the posterior has no mass, so the average is dominated by rare lucky draws;
# - **a fitted q close to the posterior**: most draws count, so few are needed;
# - **the posterior itself**: every weight equals p(x) exactly, one sample suffices.
#
# `log_likelihood(model, x, guide=..., num_samples=k)` computes this estimate per data
# point, with the guide as proposal.

# %%
ks = [1, 10, 100, 1000] if SMOKE else [1, 10, 100, 1000, 10000]
proposals = {"prior": prior_guide, "mean-field q": meanfield_guide, "exact posterior": exact_guide}
curves: dict[str, list[float]] = {name: [] for name in proposals}
print(f"{'k':>6}" + "".join(f"{name:>18}" for name in proposals) + f"{'exact':>10}")
for k in ks:
    row = []
    for name, guide in proposals.items():
        est = log_likelihood(model, x, guide=guide, num_samples=k, seed=k)
        curves[name].append(est.mean)
        row.append(est.mean)
    print(f"{k:6d}" + "".join(f"{v:18.4f}" for v in row) + f"{float(log_px.mean()):10.4f}")
ess = log_likelihood(model, x, guide=meanfield_guide, num_samples=1000, seed=0).ess
ess_prior = log_likelihood(model, x, guide=prior_guide, num_samples=1000, seed=0).ess
print(f"effective sample size of 1000 draws: prior {float(ess_prior.mean()):.1f}, "
      f"mean-field q {float(ess.mean()):.1f}")
for name in ("prior", "mean-field q"):
    assert all(b > a for a, b in zip(curves[name], curves[name][1:])), f"L_k must rise with k ({name})"
assert abs(curves["exact posterior"][0] - float(log_px.mean())) < 1e-8  # zero-variance proposal
assert curves["mean-field q"][0] - 0.1 < curves["mean-field q"][-1] < float(log_px.mean()) + 0.02

# %% [markdown]
# The left panel shows one data point: the prior (grey), the posterior (blue, one and two
# standard deviations) and the fitted mean-field q (orange dashed). The posterior is a
# long, tilted ellipse; q cannot tilt, so it settles for an axis-aligned ellipse that fits
# *inside* it. That is the signature of minimizing KL(q || p): q is punished for putting
# mass where the posterior has little, not for missing mass the posterior has, so it comes
# out too narrow.
#
# The right panel is the table above, and it has three lessons:
#
# - with the posterior as proposal the estimate is exact from k = 1;
# - the mean-field q starts from its ELBO, far above the prior at small k, but it
#   converges slowly: draws in the posterior's tails, which q rarely proposes, carry huge
#   weights (see the small effective sample size). A good *variational* q is not always a
#   good *importance* proposal; tutorial 7 turns this into a diagnostic (PSIS k-hat);
# - the prior is hopeless at small k and only catches up with thousands of samples; in a
#   latent space of more than two dimensions it would need astronomically many.

# %%
fig = Figure(figsize=(10, 4.2), layout="constrained")
ax_z, ax_k = fig.subplots(1, 2)
n0 = 0
m0, q0 = (x[n0] @ encode_exact.T).numpy(), fitted_mu[n0].numpy()
for s in (1, 2):
    ax_z.add_patch(plots.covariance_ellipse([0.0, 0.0], np.eye(2), s, fill=False, color="0.6", lw=1.5))
    ax_z.add_patch(plots.covariance_ellipse(m0, post_cov.numpy(), s, fill=False, color="C0", lw=2))
    ax_z.add_patch(plots.covariance_ellipse(q0, fitted_V.numpy(), s, fill=False, color="C1", lw=2, ls="--"))
ax_z.plot(*m0, "x", color="C0")
ax_z.set_xlim(m0[0] - 0.6, m0[0] + 0.6)
ax_z.set_ylim(m0[1] - 0.6, m0[1] + 0.6)
ax_z.set_aspect("equal")
ax_z.set_title("one x: posterior (blue), mean-field q (orange), prior (grey)", fontsize=9)
ax_z.set_xlabel("z[0]")
ax_z.set_ylabel("z[1]")
for name, colour in zip(proposals, ("0.5", "C1", "C0")):
    ax_k.plot(ks, curves[name], "o-", color=colour, label=f"proposal: {name}")
ax_k.axhline(float(log_px.mean()), color="k", ls=":", label="exact log p(x)")
ax_k.set_xscale("log")
ax_k.set_ylim(float(log_px.mean()) - 8, float(log_px.mean()) + 1)
ax_k.set_xlabel("k (samples per data point)")
ax_k.set_ylabel("estimated mean log p(x)")
ax_k.set_title("importance-sampled log p(x) rises with k", fontsize=9)
ax_k.legend(fontsize=8, loc="lower right")
save(fig, "02_elbo.png")

# %%
print("\nKey numbers")
print(f"  exact log p(x) {float(log_px.mean()):.4f}; "
      f"|ELBO + KL - log p(x)| <= {max(identity_errors.values()):.1e}")
print(f"  best mean-field KL gap {meanfield_gap:.4f} nats; "
      f"fitted q's gap {float(log_px.mean()) - fitted_elbo:.4f}")
print("  L_k for k = " + ", ".join(str(k) for k in ks) + ":")
for name in proposals:
    print(f"    {name:>16}: " + ", ".join(f"{v:.3f}" for v in curves[name]))
print(f"  runtime {runtime()}")
