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
# # 9. A hidden Markov model, written in Pyro and fitted by EM
#
# A hidden Markov model (HMM) explains a sequence y_1..y_T by a chain of hidden states:
#
#     z_1 ~ Categorical(pi),   z_t | z_{t-1} ~ Categorical(A[z_{t-1}]),   y_t | z_t ~ N(mu[z_t], sigma[z_t]).
#
# We write it the way Pyro's `examples/hmm.py` does, as a plain Pyro program: `pyro.param`s,
# the sequences in a plate, `pyro.markov` over time, every z_t enumerated, and no guide.
# `em` then fits it by expectation-maximization: the E-step computes the exact posterior of
# the hidden states, and the M-step maximizes the expected complete-data log-likelihood. We
# write no M-step: `em` recognizes the model as a chain of exponential-family sites whose
# parameters are `pyro.param`s indexed by the states, compiles it once, and runs
# Baum-Welch, the classical closed-form EM for HMMs. We check the result against the forward
# algorithm written out here, and, where it is installed, against hmmlearn.
#
# Runtime: 1 to 3 minutes in full mode, 20 s to a minute with `LVM_PYRO_SMOKE=1` (2 CPU cores,
# the longer figures on a busy machine).

# %%
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from _common import SMOKE, runtime, save
from matplotlib.figure import Figure
from torch.distributions import constraints

from lvm_pyro.infer.em import em

torch.set_default_dtype(torch.float64)

# %% [markdown]
# ## Data from a known HMM
#
# Three states with means -2, 0 and 2.5, sticky transitions, N sequences of length T.

# %%
N, T, K = (40, 25, 3) if SMOKE else (200, 100, 3)
g = torch.Generator().manual_seed(0)
true_pi = torch.tensor([0.5, 0.3, 0.2])
true_A = torch.tensor([[0.90, 0.07, 0.03], [0.05, 0.90, 0.05], [0.04, 0.06, 0.90]])
true_mu, true_sigma = torch.tensor([-2.0, 0.0, 2.5]), torch.tensor([0.6, 0.8, 0.5])
states = torch.zeros(N, T, dtype=torch.long)
states[:, 0] = torch.multinomial(true_pi, N, replacement=True, generator=g)
for t in range(1, T):
    states[:, t] = torch.multinomial(true_A[states[:, t - 1]], 1, generator=g).squeeze(-1)
sequences = true_mu[states] + true_sigma[states] * torch.randn(N, T, generator=g)
print(f"{N} sequences of length {T}")

# %% [markdown]
# ## The model: a Pyro program
#
# The plate over sequences sits at dim -2 so that the enumerated state of each step can use
# dim -3 and beyond; `pyro.markov` tells Pyro that z_t depends on z_{t-1} only, so that the
# enumeration reuses two dims instead of T. Parameters start from a deliberately poor guess.

# %%
def hmm(sequences):
    pi = pyro.param("pi", torch.ones(K) / K, constraint=constraints.simplex)
    A = pyro.param("A", 0.5 * torch.eye(K) + 0.5 / K, constraint=constraints.simplex)
    mu = pyro.param("mu", torch.tensor([-1.0, 0.5, 1.0]))
    sigma = pyro.param("sigma", torch.ones(K), constraint=constraints.positive)
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            z = pyro.sample(f"z_{t}", dist.Categorical(pi if z is None else A[z]),
                            infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(mu[z], sigma[z]), obs=sequences[batch, t].unsqueeze(-1))


# %% [markdown]
# ## Fitting it with `em`
#
# `data_plate="sequences"` names the plate over the rows of the data (one row per sequence).
# The result says which route ran: `e_step="chain"` (the compiled forward-backward pass) and
# `m_step="closed_form"`, with the route of every parameter in `param_routes`.

# %%
pyro.clear_param_store()
result = em(hmm, sequences, data_plate="sequences", max_iter=200, tol=1e-8, device="cpu")
print(result)
print("routes:", result.param_routes)
fitted = {name: pyro.param(name).detach() for name in ("pi", "A", "mu", "sigma")}
print("mu:", fitted["mu"].numpy().round(3), " sigma:", fitted["sigma"].numpy().round(3))
print("A:\n", fitted["A"].numpy().round(3))
assert np.all(np.diff(result.log_likelihood) >= -1e-9), "EM never lowers the log-likelihood"

# %% [markdown]
# ## The check: the forward algorithm
#
# log p(y_1..T) = log sum_k alpha_T(k), with alpha_1(k) = pi_k p(y_1 | k) and
# alpha_t(k) = sum_j alpha_{t-1}(j) A_jk p(y_t | k), computed in log space. `em`'s reported
# log-likelihood per sequence must be the forward algorithm's at the fitted parameters.

# %%
def forward_algorithm(pi, A, mu, sigma, y):
    log_b = dist.Normal(mu, sigma).log_prob(y[..., None])  # (N, T, K)
    alpha = pi.log() + log_b[:, 0]
    for t in range(1, y.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + A.log(), 1) + log_b[:, t]
    return torch.logsumexp(alpha, 1)


exact = forward_algorithm(**fitted, y=sequences)
print(f"em: {result.log_likelihood[-1]:.10f}   forward algorithm: {float(exact.mean()):.10f} per sequence")
assert abs(result.log_likelihood[-1] - float(exact.mean())) < 1e-9
truth = forward_algorithm(true_pi, true_A, true_mu, true_sigma, sequences).mean()
print(f"at the true parameters: {float(truth):.4f} (the fit is higher: it is the maximum likelihood)")

# %% [markdown]
# ## The same fit by hmmlearn
#
# hmmlearn's `GaussianHMM` runs Baum-Welch in compiled code; with `covars_prior=0` it computes
# the same maximum-likelihood M-step, so from the same start both go through the same
# log-likelihoods, iteration for iteration.

# %%
try:
    from hmmlearn.hmm import GaussianHMM
except ImportError:
    print("hmmlearn is not installed: pip install hmmlearn to compare")
else:
    peer = GaussianHMM(K, "diag", n_iter=10, tol=0.0, init_params="", params="stmc", covars_prior=0.0)
    peer.startprob_, peer.transmat_ = np.ones(K) / K, 0.5 * np.eye(K) + 0.5 / K
    peer.means_, peer.covars_ = np.array([[-1.0], [0.5], [1.0]]), np.ones((K, 1))
    peer.fit(sequences.numpy().reshape(-1, 1), lengths=[T] * N)
    ours = np.array(result.log_likelihood[:10]) * N
    print("largest relative difference over 10 iterations:",
          f"{np.max(np.abs(ours - peer.monitor_.history) / np.abs(peer.monitor_.history)):.1e}")

# %% [markdown]
# ## The hidden states
#
# The posterior p(z_t | y_1..T) of one sequence by the forward-backward recursions, against
# the states that generated it.

# %%
def posterior_states(pi, A, mu, sigma, y):
    log_b = dist.Normal(mu, sigma).log_prob(y[:, None])  # (T, K)
    alpha, beta = [pi.log() + log_b[0]], [torch.zeros(K)]
    for t in range(1, len(y)):
        alpha.append(torch.logsumexp(alpha[-1][:, None] + A.log(), 0) + log_b[t])
    for t in range(len(y) - 1, 0, -1):
        beta.insert(0, torch.logsumexp(A.log() + log_b[t] + beta[0], 1))
    log_post = torch.stack(alpha) + torch.stack(beta)
    return (log_post - log_post.logsumexp(1, keepdim=True)).exp()


order = fitted["mu"].argsort()  # states labelled by their mean, as the truth
post = posterior_states(**fitted, y=sequences[0])[:, order]
decoded = post.argmax(1)  # state labels in the order of their means, as the true states
accuracy = float((decoded == states[0]).double().mean())
print(f"sequence 0: the most probable state matches the true one at {accuracy:.0%} of the steps")

fig = Figure(figsize=(10, 3.6))
ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
ax1.plot(result.log_likelihood, marker=".")
ax1.axhline(float(truth), color="gray", ls="--", label="at the true parameters")
ax1.set_xlabel("EM iteration")
ax1.set_ylabel("log-likelihood per sequence")
ax1.legend()
ax2.plot(sequences[0].numpy(), color="black", lw=1, label="y")
for k, color in enumerate(["tab:blue", "tab:orange", "tab:green"]):
    ax2.fill_between(range(T), -4, -4 + 8 * post[:, k].numpy(), color=color, alpha=0.25,
                     label=f"p(z = state {k} | y)")
ax2.scatter(range(T), true_mu[states[0]].numpy(), s=8, color="red", label="true state's mean")
ax2.set_xlabel("t")
ax2.legend(fontsize=7, loc="upper right")
fig.tight_layout()
save(fig, "09_hmm_em.png")

# %% [markdown]
# ## What else
#
# - Categorical emissions (`dist.Categorical(emit[z])`), Bernoulli, Poisson, Exponential and
#   Gamma emissions take the same closed-form route; a parameter the closed form does not
#   cover takes gradient steps on the same compiled arrays (`m_step="closed_form+gradient"`),
#   and a model outside the chain shape falls back to Pyro's enumeration with the reason in
#   `result.closed_form_refused`.
# - Missing observations: `pyro.sample(..., obs=y, obs_mask=observed)` sums the missing
#   entries out exactly; padded sequences: `poutine.mask` as in Pyro's example.
# - `em(..., sample_weight=w)` weights whole sequences (integer weights equal repeated rows).

# %%
print("\nKey numbers")
print(f"  em: {result.n_iter} iterations, routes {result.e_step} / {result.m_step}, "
      f"log-likelihood {result.log_likelihood[-1]:.6f} per sequence")
print(f"  forward algorithm at the fit: {float(exact.mean()):.6f}; at the truth: {float(truth):.4f}")
print(f"  sequence 0 decoded at {accuracy:.0%} of the steps")
print(f"  runtime {runtime()}")
