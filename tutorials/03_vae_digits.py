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
# # 3. The variational autoencoder on handwritten digits
#
# A mixture explains each point by one of K clusters. A VAE replaces the finite list of
# clusters by a continuous code z and the cluster table by a neural network:
#
#     z ~ N(0, I),    x | z ~ Bernoulli(sigmoid(f_theta(z)))     (one coin per pixel)
#
# so p(x) = integral p(z) p(x | z) dz is an *infinite* mixture. Nothing about it is
# tractable: neither p(x) nor the posterior p(z | x). We fit it with the ELBO of
# tutorial 2, using a Gaussian q(z | x) = N(mu_phi(x), diag sigma_phi(x)^2) whose mean and
# scales come from a second network, the *encoder* (tutorial 4 is about why one network
# for all x, rather than separate parameters per x). Splitting the ELBO,
#
#     ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)),
#
# reads as "reconstruct x from a code drawn from q, while keeping q close to the prior".
#
# The parameters of both networks are trained together by stochastic gradients of the
# ELBO. The gradient for the *decoder* is easy (differentiate inside the expectation); the
# gradient for the *encoder* is the subtle part, because the distribution we average over
# depends on the parameters being differentiated. The first section measures the two
# classical answers.
#
# Runtime: about 1.5 minutes in full mode, about 25 s with `LVM_PYRO_SMOKE=1` (2 CPU cores).

# %%
import torch
from _common import SMOKE, runtime, save

from lvm_pyro import elbo, fit
from lvm_pyro.data import load_digits
from lvm_pyro.diagnostics import plots
from lvm_pyro.diagnostics.gradients import gradient_variance
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.vae import VAE

# %% [markdown]
# ## The data
#
# scikit-learn's 1797 digits, 8x8 pixels, binarized at grey level 8 for a Bernoulli
# likelihood, split 1197 / 300 / 300 into train, validation and test.

# %%
digits = load_digits(binarize=8)
x_train, x_val, x_test = digits.train.x, digits.val.x, digits.test.x
y_test = digits.test.y
print(digits)

# %% [markdown]
# ## Two ways to differentiate through a sample
#
# We need grad_phi E_{z ~ q_phi}[f(z)] with f(z) = log p(x, z) - log q_phi(z | x).
#
# - **Score function (REINFORCE).** Since grad q = q grad log q,
#   grad_phi E_q[f] = E_q[f(z) grad_phi log q_phi(z)] (+ E_q[grad_phi f], the easy part).
#   It works for any q we can sample and evaluate, discrete ones included, but f(z) enters
#   only as a *weight*: the estimator does not know in which direction f improves, and its
#   variance grows with the size of f. Subtracting a baseline b (any quantity not depending
#   on z) keeps it unbiased and can shrink the variance.
# - **Reparameterization (pathwise).** Write the sample as a differentiable function of
#   parameter-free noise, z = mu_phi(x) + sigma_phi(x) * eps, eps ~ N(0, I). Then
#   grad_phi E_q[f(z)] = E_eps[grad_phi f(mu + sigma * eps)]: the gradient flows through f
#   itself and uses its slope.
#
# Both are unbiased; `gradient_variance` draws each many times at the same parameters and
# measures the spread. We do it on a freshly initialized VAE and a batch of 64 digits.

# %%
torch.manual_seed(0)
probe = VAE((64,), latent_dim=16, hidden=(256, 256))
batch = x_train[:64]
draws = 30 if SMOKE else 200
variances = {
    "reparameterization": gradient_variance(probe, batch, objective="reparam", num_draws=draws, seed=0),
    "score, no baseline": gradient_variance(probe, batch, objective="score", score_baseline="none",
                                            num_draws=draws, seed=0),
    "score, neural baseline": gradient_variance(probe, batch, objective="score", score_baseline="neural",
                                                num_draws=draws, seed=0),
}
encoder = [name for name in variances["reparameterization"].per_parameter if name.startswith("encoder")]
reference = variances["reparameterization"]
n_weights = sum(reference.sizes[n] for n in encoder)
print(f"variance of the encoder's gradient over {draws} draws (sum over its {n_weights} weights):")
ratios = {}
for label, gv in variances.items():
    ratios[label] = gv.ratio(reference, encoder)
    enc_total = sum(gv.per_parameter[n] * gv.sizes[n] for n in encoder)
    print(f"  {label:<24} {enc_total:12.4g}   x{ratios[label]:9.1f} the reparameterized one")
assert ratios["score, no baseline"] > 10, "the score-function gradient should be far noisier"

# %% [markdown]
# Plain REINFORCE is thousands of times noisier for the same parameters. A learned baseline
# b(x) (a small network regressing each point's ELBO) removes much of that, but not all.
# The decoder's gradient is the same under both (its parameters do not shape the
# sampling distribution), which is why only the encoder's weights are compared.
#
# Does the variance matter for training? Two identical VAEs, one trained with each
# estimator (`fit(..., objective="reparam")` vs `objective="score"`, whose default is a
# decaying-average baseline), same seed, same number of steps, no KL warm-up:

# %%
compare_epochs = 3 if SMOKE else 40
curves = {}
for estimator in ("reparam", "score"):
    torch.manual_seed(0)
    vae = VAE((64,), latent_dim=16, hidden=(256, 256))
    run = fit(vae, x_train, objective=estimator, epochs=compare_epochs, batch_size=64, lr=1e-3,
              val_data=x_val, kl_warmup=0, progress=False, seed=0)
    curves[estimator] = run.val_elbo
    print(f"{estimator:>8}: validation ELBO after {compare_epochs} epochs {run.val_elbo[-1]:.3f} "
          f"({run.wall_time:.1f} s)")
if not SMOKE:
    assert curves["reparam"][-1] > curves["score"][-1]

# %% [markdown]
# ## Training the VAE
#
# Now the real model: a 16-dimensional code, two hidden layers of 256 units in each
# network. One practical detail matters on such a small dataset: **KL warm-up**. Early in
# training the decoder is poor, so the cheapest way to raise the ELBO is to make
# q(z | x) equal to the prior (KL = 0) and ignore z altogether; once there, the decoder
# never learns to use z ("posterior collapse"). Multiplying the KL term by a factor that
# grows linearly from 0 to 1 over the first epochs lets the code become useful first.
# `VAE` asks for it by default (`default_kl_warmup`); `fit` applies it.

# %%
epochs = 8 if SMOKE else 300
torch.manual_seed(1)
vae = VAE((64,), latent_dim=16, hidden=(256, 256))
result = fit(vae, x_train, epochs=epochs, batch_size=64, lr=1e-3, val_data=x_val,
             kl_warmup=min(100, epochs // 2), progress=False, seed=1)
print(f"{result.steps} steps in {result.wall_time:.1f} s; final validation ELBO {result.val_elbo[-1]:.3f}")
fig = plots.plot_loss(result)
fig.axes[0].set_ylim(None, 60)
fig.axes[0].set_title("VAE on binarized digits: -ELBO per image (KL warm-up first)")
save(fig, "03_vae_training.png")

# %% [markdown]
# The training loss first *rises* a little: that is the warm-up putting the KL term back
# in, not the model getting worse.
#
# ## How good is it? The ELBO and log p(x) on held-out digits
#
# The test ELBO bounds log p(x); the importance-weighted estimate of tutorial 2 with the
# encoder as proposal tightens it (k = 1000 samples per image).

# %%
k = 100 if SMOKE else 1000
test_elbo = elbo(vae, x_test, num_particles=10, seed=0)
test_ll = log_likelihood(vae, x_test, num_samples=k, seed=0)
print(f"test ELBO          {test_elbo:8.3f} nats per image")
print(f"test log p(x)      {test_ll.mean:8.3f} +- {test_ll.stderr:.3f} (k = {k})")
print(f"gap ELBO -> log p: {test_ll.mean - test_elbo:8.3f} nats (the average KL(q || posterior), roughly)")
assert test_ll.mean > test_elbo

# %% [markdown]
# ## What the model learned
#
# The central tasks of tutorial 1, now with a continuous z:
#
# - **reconstruction**: encode x to the mean of q(z | x), decode to E[x | z];
# - **generation**: z ~ N(0, I), then the decoder's pixel probabilities;
# - **the latent space**: the encoder means of the test digits, coloured by their labels,
#   which the model never saw. A code that separates the digits has discovered them.
#
# A dimension of z whose encoder mean does not vary with x carries no information (its q
# is the prior for every x): counting the *active* dimensions, those whose mean varies
# across the data by more than 0.01, shows how much of the 16-dimensional code is used.

# %%
recon = vae.reconstruct(x_test[:10])
save(plots.plot_reconstructions(x_test[:10], recon, (8, 8), title="test digits and reconstructions"),
     "03_vae_reconstructions.png")
torch.manual_seed(0)
samples = vae.sample(30, mean=True)
save(plots.plot_samples(samples, (8, 8), title="samples: z ~ N(0, I), pixel probabilities"),
     "03_vae_samples.png")
codes = vae.encode(x_test).mean
save(plots.plot_latent(codes, y_test, title="test digits: E_q[z | x], first two principal components"),
     "03_vae_latent.png")
activity = codes.var(0)
active = int((activity > 0.01).sum())
print(f"active latent dimensions: {active} of {vae.latent_dim}")
top = torch.argsort(activity, descending=True)[:4].tolist()
save(plots.plot_latent_traversal(lambda z: vae.decode(z).mean, vae.latent_dim, (8, 8), dims=top),
     "03_vae_traversal.png")

# %% [markdown]
# The traversal decodes z = 0 + v e_j for the four most active dimensions j: walking along
# one axis of the code morphs one digit into another, which is what "a continuous mixture"
# means in practice.

# %%
print("\nKey numbers")
print(f"  encoder gradient variance, score / reparam: no baseline x{ratios['score, no baseline']:.0f}, "
      f"neural baseline x{ratios['score, neural baseline']:.1f}")
print(f"  validation ELBO after {compare_epochs} epochs: reparam {curves['reparam'][-1]:.2f}, "
      f"score {curves['score'][-1]:.2f}")
print(f"  test ELBO {test_elbo:.2f}, test log p(x) {test_ll.mean:.2f} +- {test_ll.stderr:.2f} (k={k}); "
      f"{active}/16 active dimensions")
print(f"  runtime {runtime()}")
