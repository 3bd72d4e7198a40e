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
# # 8. Write your own model
#
# Everything in the previous tutorials works through one small contract: a model is a Pyro
# program `model(x)` with its observations in `pyro.plate("data", len(x))`, and a `guide(x)`
# over the same latent sites (discrete sites may instead be marked for enumeration). The
# library's models are just instances of that contract; the inference and diagnostic
# functions never look inside them. So a model the library does not ship gets everything
# for free. We write two:
#
# - **factor analysis**, a continuous latent-variable model with a closed-form marginal
#   likelihood, trained with every SVI estimator and checked against the closed form and
#   against scikit-learn;
# - a **mixture of linear regressions** (a generative mixture of experts), with a
#   discrete latent site, trained by EM and by gradient ascent with the site enumerated.
#
# Runtime: 1 to 2.5 minutes in full mode, about 25 s with `LVM_PYRO_SMOKE=1` (2 CPU cores).

# %%
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from _common import SMOKE, runtime, save
from matplotlib.figure import Figure
from pyro.nn import pyro_method
from sklearn.decomposition import FactorAnalysis as SklearnFactorAnalysis
from torch import nn
from torch.nn import functional as F

from lvm_pyro import LatentVariableModel, elbo, fit
from lvm_pyro.diagnostics import plots
from lvm_pyro.diagnostics.arviz import psis_khat, to_inference_data
from lvm_pyro.infer.em import em
from lvm_pyro.infer.evaluate import log_likelihood

torch.set_default_dtype(torch.float64)


# %% [markdown]
# ## Part 1: factor analysis
#
# D observed features are explained by k < D hidden factors:
#
#     z ~ N(0, I_k),    x | z ~ N(mu + W z, diag(psi)).
#
# Integrating z out gives x ~ N(mu, W W^T + diag(psi)): the model is a Gaussian whose
# covariance is low-rank plus diagonal, so its log-likelihood is available in closed form
# and we can check every approximate number against it. The posterior is Gaussian too,
# with a covariance that does not depend on x and a mean linear in x, so a guide with a
# linear encoder and one shared full covariance contains the exact posterior; a diagonal
# one does not.
#
# The class below is the whole implementation: parameters as ordinary torch parameters,
# the generative program, the guide, and the closed-form marginal for checking.


# %%
class FactorAnalysis(LatentVariableModel):
    """x = mu + W z + e, z ~ N(0, I_k), e ~ N(0, diag psi); q(z | x) = N(A x + b, L L^T)."""

    def __init__(self, n_features: int, n_factors: int, guide_covariance: str = "full") -> None:
        super().__init__()
        self.input_shape = (n_features,)
        self.k = n_factors
        self.full = guide_covariance == "full"
        self.mean = nn.Parameter(torch.zeros(n_features))
        self.loading = nn.Parameter(0.1 * torch.randn(n_features, n_factors))
        self.raw_noise = nn.Parameter(torch.zeros(n_features))
        self.encoder = nn.Linear(n_features, n_factors)
        self.raw_tril = nn.Parameter(torch.zeros(n_factors, n_factors))

    def noise_variance(self) -> torch.Tensor:
        return F.softplus(self.raw_noise) + 1e-4

    def guide_scale_tril(self) -> torch.Tensor:
        diagonal = torch.diag_embed(F.softplus(self.raw_tril.diagonal()) + 1e-4)
        return diagonal + (torch.tril(self.raw_tril, -1) if self.full else 0.0)

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        eye = torch.eye(self.k, dtype=x.dtype, device=x.device)
        with self.data_plate(x):
            prior = dist.MultivariateNormal(x.new_zeros(self.k), scale_tril=eye).expand([len(x)])
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(self.mean + z @ self.loading.T, self.noise_variance().sqrt())
                        .to_event(1), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        with self.data_plate(x):
            pyro.sample("z", dist.MultivariateNormal(self.encoder(x), scale_tril=self.guide_scale_tril()))

    @torch.no_grad()
    def exact_posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z | x) = N(S W^T diag(psi)^-1 (x - mu), S) with S^-1 = I + W^T diag(psi)^-1 W."""
        scaled = self.loading / self.noise_variance()[:, None]
        cov = torch.linalg.inv(torch.eye(self.k, dtype=x.dtype) + self.loading.T @ scaled)
        return dist.MultivariateNormal((x - self.mean) @ scaled @ cov, cov)

    @torch.no_grad()
    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(mu, W W^T + diag psi), z integrated out."""
        cov = self.loading @ self.loading.T + torch.diag(self.noise_variance())
        return dist.MultivariateNormal(self.mean.detach(), cov)


# %% [markdown]
# Data: 10 centred features driven by 3 factors, drawn from a factor-analysis model with
# known parameters; the last 20% of the rows are held out.

# %%
D, K = 10, 3
g = torch.Generator().manual_seed(0)
true_loading = torch.randn(D, K, generator=g)
true_noise = 0.2 + 0.5 * torch.rand(D, generator=g)
n = 400 if SMOKE else 1000
data = torch.randn(n, K, generator=g) @ true_loading.T + true_noise.sqrt() * torch.randn(n, D, generator=g)
x_train, x_test = data[: int(0.8 * n)], data[int(0.8 * n):]
true_cov = true_loading @ true_loading.T + torch.diag(true_noise)
truth = dist.MultivariateNormal(torch.zeros(D), true_cov)
print(f"test log-likelihood of the true parameters: {float(truth.log_prob(x_test).mean()):.4f} nats per row")

# %% [markdown]
# ### Train it with every estimator
#
# The same model and guide, the same initialization, the same number of steps; only the
# gradient estimator changes. For each we report the test ELBO, the importance-sampled test
# log p(x) (`log_likelihood`, k = 500) and the *closed-form* test log p(x) of the fitted
# parameters: the two should agree whatever estimator trained the model.

# %%
steps = 300 if SMOKE else 2000
fa_settings = dict(steps=steps, batch_size=100, lr=0.02, progress=False, seed=0)
fitted, results = {}, {}
for estimator in ("reparam", "meanfield", "iwae", "score"):
    torch.manual_seed(0)
    fa = FactorAnalysis(D, K)
    run = fit(fa, x_train, objective=estimator, **fa_settings)
    fitted[estimator] = fa
    results[estimator] = dict(
        run=run,
        elbo=elbo(fa, x_test, num_particles=100, seed=0),
        ll=log_likelihood(fa, x_test, num_samples=500, seed=0).mean,
        exact=float(fa.marginal().log_prob(x_test).mean()),
    )
sk = SklearnFactorAnalysis(n_components=K, random_state=0).fit(x_train.numpy())
sk_score = sk.score(x_test.numpy())
print(f"{'estimator':>10} {'time':>6} {'test ELBO':>10} {'IS log p(x)':>12} {'exact log p(x)':>15}")
for estimator, r in results.items():
    print(f"{estimator:>10} {r['run'].wall_time:5.1f}s {r['elbo']:10.4f} {r['ll']:12.4f} {r['exact']:15.4f}")
print(f"{'sklearn':>10} {'':>6} {'':>10} {'':>12} {sk_score:15.4f}   (closed-form EM)")
for r in results.values():
    assert abs(r["ll"] - r["exact"]) < 0.05, "importance sampling must agree with the closed form"
    assert r["elbo"] <= r["exact"] + 0.01, "the ELBO is a lower bound"
if not SMOKE:
    for estimator in ("reparam", "meanfield", "iwae"):
        assert abs(results[estimator]["exact"] - sk_score) < 0.05

# %% [markdown]
# Three things to read from the table:
#
# - the importance-sampled log p(x) matches the closed form to a few hundredths of a nat,
#   so `log_likelihood` can be trusted on models where no closed form exists;
# - the pathwise estimators (reparam, meanfield, iwae) reach scikit-learn's maximum
#   likelihood fit; the score-function estimator, with the same steps, lags behind,
#   as tutorial 3's variance measurements predicted;
# - the ELBO sits below log p(x) by KL(q(z | x) || p(z | x)), the subject of the next
#   section.
#
# ### Diagnose the guide
#
# Here the posterior is known (`exact_posterior`), so the KL from each guide to it can be
# computed exactly, and compared with what PSIS k-hat (tutorial 7) reports *without*
# knowing the answer. We also train the model with a diagonal guide, which cannot express
# correlations between the factors: for posterior precision P no diagonal q gets closer
# than 0.5 (sum_i log P_ii - log det P).

# %%
torch.manual_seed(0)
fa_diag = FactorAnalysis(D, K, guide_covariance="diag")
fit(fa_diag, x_train, objective="reparam", **fa_settings)


@torch.no_grad()
def guide_kl(model: FactorAnalysis, x: torch.Tensor) -> float:
    """(1/N) sum_n KL(q(z | x_n) || p(z | x_n)), exactly."""
    q = dist.MultivariateNormal(model.encoder(x), scale_tril=model.guide_scale_tril())
    return float(torch.distributions.kl_divergence(q, model.exact_posterior(x)).mean())


precision = torch.linalg.inv(fa_diag.exact_posterior(x_test[:1]).covariance_matrix[0])
floor = 0.5 * float(precision.diagonal().log().sum() - torch.logdet(precision))
kl_full, kl_diag = guide_kl(fitted["reparam"], x_test), guide_kl(fa_diag, x_test)
print(f"test KL(q || posterior): full-covariance guide {kl_full:.4f}, diagonal guide {kl_diag:.4f} "
      f"(no diagonal guide can go below {floor:.4f})")
assert kl_diag >= floor - 1e-9
draws = 100 if SMOKE else 500
khat_full = psis_khat(fitted["reparam"], x_test, num_samples=draws, seed=0)
khat_diag = psis_khat(fa_diag, x_test, num_samples=draws, seed=0)
for name, kh in (("full", khat_full), ("diagonal", khat_diag)):
    finite = kh.khat_per_point[np.isfinite(kh.khat_per_point)]
    print(f"{name:>8} guide: per-point k-hat median {np.median(finite):.2f}, counts {kh.counts()}")
idata = to_inference_data(fitted["reparam"], x_test, num_samples=100, seed=0)
print(idata.posterior["z"].shape, "posterior draws of z (chain, draw, point, factor)")

# %% [markdown]
# Two lessons, one of them about variational inference in general:
#
# - the full guide's KL is small but not zero: its family contains the posterior, and
#   stochastic optimization gets most of the way there (the rest keeps shrinking with more
#   steps);
# - the diagonal guide ends further from the posterior, but almost none of that distance
#   is forced by its family: its floor is tiny, because the *model* moved to meet the
#   guide. The loading matrix W is only determined up to a rotation (W R fits the data
#   exactly as well for any rotation R), and the ELBO prefers the rotation whose posterior
#   the guide can represent, one with nearly uncorrelated factors. Training by the ELBO
#   biases the model towards posteriors that look like q; here that bias is free, in
#   general it is not.
#
# PSIS k-hat, without being told the posterior, finds both guides usable: most data points
# are "good" (below 0.5), with a few more "ok" or "bad" ones for the diagonal guide.
# `to_inference_data` stored draws of every z_i and
# replicated data, shown against the test data in `08_fa_ppc.png` (`plot_ppc`).

# %% [markdown]
# ## Part 2: a mixture of linear regressions, fitted by EM
#
# Points (u, v) come from one of K linear relations; which one is hidden. As a joint
# model,
#
#     z ~ Categorical(pi),    u | z ~ N(m_z, s_z^2),    v | u, z ~ N(a_z + b_z u, sigma_z^2),
#
# so that p(z | u), the probability that expert z is responsible for an input u, comes out
# of Bayes' rule: a gate learned without a gating network (Xu, Jordan and Hinton's
# generative mixture of experts). z is marked for enumeration, so:
#
# - `em` works on it unchanged: the E-step enumerates z, and since the model has no
#   closed-form M-step, `em` takes a few Adam steps on the expected complete-data
#   log-likelihood per iteration (generalized EM, still never decreasing);
# - `fit(..., objective="enum")` climbs the exact marginal likelihood by gradients;
# - `log_likelihood` sums z out exactly.


# %%
class MixtureOfRegressions(LatentVariableModel):
    """z ~ Cat(pi), u | z ~ N(m_z, s_z^2), v | u, z ~ N(a_z + b_z u, sigma_z^2); data rows (u, v)."""

    input_shape = (2,)

    def __init__(self, n_experts: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_experts))
        self.u_mean = nn.Parameter(torch.linspace(-1, 1, n_experts))
        self.u_raw_scale = nn.Parameter(torch.zeros(n_experts))
        self.intercept = nn.Parameter(torch.zeros(n_experts))
        self.slope = nn.Parameter(torch.linspace(-0.5, 0.5, n_experts))
        self.v_raw_scale = nn.Parameter(torch.zeros(n_experts))

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        u, v = x[:, 0], x[:, 1]
        with self.data_plate(x):
            z = pyro.sample("z", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
            pyro.sample("u", dist.Normal(self.u_mean[z], F.softplus(self.u_raw_scale[z])), obs=u)
            pyro.sample("v", dist.Normal(self.intercept[z] + self.slope[z] * u,
                                         F.softplus(self.v_raw_scale[z])), obs=v)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """Nothing to sample: z is summed out and the parameters are point estimates."""

    @torch.no_grad()
    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(z = k | u, v) for every row, shape (N, K)."""
        u, v = x[:, :1], x[:, 1:]
        log_joint = (F.log_softmax(self.logits, -1)
                     + dist.Normal(self.u_mean, F.softplus(self.u_raw_scale)).log_prob(u)
                     + dist.Normal(self.intercept + self.slope * u, F.softplus(self.v_raw_scale)).log_prob(v))
        return log_joint.softmax(-1)


g = torch.Generator().manual_seed(1)
m = 300 if SMOKE else 600
which = torch.randint(0, 2, (m,), generator=g)
u = torch.where(which == 0, -1.0, 1.5) + 0.8 * torch.randn(m, generator=g)
v = torch.where(which == 0, 1.0 - 1.5 * u, -1.0 + 0.8 * u) + 0.3 * torch.randn(m, generator=g)
points = torch.stack([u, v], 1)

torch.manual_seed(0)
moe = MixtureOfRegressions(2)
em_result = em(moe, points, max_iter=40 if SMOKE else 150, tol=1e-6, m_step_steps=20, m_step_lr=0.05)
objective = np.array(em_result.objective)
print(f"EM ({em_result.e_step} E-step, {em_result.m_step} M-step): {em_result.n_iter} iterations, "
      f"log-likelihood {objective[0]:.4f} -> {objective[-1]:.4f} per point, "
      f"smallest change {np.diff(objective).min():.1e}")
assert np.diff(objective).min() >= -1e-6, "generalized EM never lowers the likelihood"
print(f"slopes {moe.slope.detach().numpy().round(3)} (true -1.5 and 0.8), "
      f"intercepts {moe.intercept.detach().numpy().round(3)} (true 1.0 and -1.0)")

torch.manual_seed(0)
moe_grad = MixtureOfRegressions(2)
grad_run = fit(moe_grad, points, objective="enum", steps=300 if SMOKE else 1500, lr=0.05,
               batch_size=len(points), progress=False, seed=0)
exact_em = log_likelihood(moe, points, num_samples=1).mean
exact_grad = log_likelihood(moe_grad, points, num_samples=1).mean
print(f"log p(u, v) per point, z summed out: EM {exact_em:.4f}, gradient ascent (enum) {exact_grad:.4f}")
assert abs(exact_em - objective[-1]) < 1e-6

em_idata = to_inference_data(em_result, points)
print("EM result as InferenceData:", list(em_idata.groups()),
      f"log_likelihood group {dict(em_idata.log_likelihood.sizes)}")

# %% [markdown]
# The left panel: the factor-analysis fits, test log p(x) of each estimator against the
# closed form and scikit-learn. The right panel: the mixture of regressions, points
# coloured by their responsibility p(z | u, v), with the two fitted experts.

# %%
fig = Figure(figsize=(11, 4.2), layout="constrained")
ax_fa, ax_moe = fig.subplots(1, 2)
names = list(results)
positions = np.arange(len(names))
ax_fa.plot(positions, [results[e]["exact"] for e in names], "o", ms=12, mfc="none", mew=2,
           label="closed form log N(x; mu, W W^T + diag psi)")
ax_fa.plot(positions, [results[e]["ll"] for e in names], "x", ms=9, mew=2, label="importance-sampled (k=500)")
ax_fa.plot(positions, [results[e]["elbo"] for e in names], "v", ms=7, color="C2", label="ELBO")
ax_fa.axhline(sk_score, color="k", ls=":", label="scikit-learn FactorAnalysis")
ax_fa.set_xticks(positions, names)
ax_fa.set_xlim(-0.5, len(names) - 0.5)
shown = [sk_score] + [results[e][key] for e in names for key in ("exact", "ll", "elbo")]
pad = 0.12 * (max(shown) - min(shown)) or 0.01
ax_fa.set_ylim(min(shown) - pad, max(shown) + pad)  # every line inside the frame, none on its edge
ax_fa.set_ylabel("test log p(x) per row")
ax_fa.set_title("factor analysis, trained with each estimator", fontsize=10)
ax_fa.legend(fontsize=8, loc="lower left")
resp = moe.responsibilities(points)
plots.plot_latent(points, resp[:, 1], ax=ax_moe, title="mixture of regressions (EM): p(z = 1 | u, v)")
grid = torch.linspace(float(u.min()), float(u.max()), 50)
for k in range(2):
    line = (moe.intercept[k] + moe.slope[k] * grid).detach()
    ax_moe.plot(grid, line, color="k", lw=2)
fig.axes[-1].set_ylabel("p(z = 1 | u, v)")
ax_moe.set_xlabel("u")
ax_moe.set_ylabel("v")
save(fig, "08_your_own_model.png")
save(plots.plot_ppc(idata), "08_fa_ppc.png")

# %%
print("\nKey numbers")
for estimator, r in results.items():
    print(f"  FA {estimator:>9}: test log p(x) IS {r['ll']:.3f} vs exact {r['exact']:.3f} "
          f"({r['run'].wall_time:.0f} s)")
print(f"  FA scikit-learn: {sk_score:.3f}; KL(q || posterior): full guide {kl_full:.3f}, "
      f"diagonal {kl_diag:.3f} (floor {floor:.3f})")
print(f"  mixture of regressions: EM {exact_em:.4f} vs enum-gradient {exact_grad:.4f} per point")
print(f"  runtime {runtime()}")
