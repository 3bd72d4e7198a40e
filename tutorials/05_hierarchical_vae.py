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
# # 5. The hierarchical VAE
#
# A VAE's prior N(0, I) is fixed and featureless; all the structure of the data must be
# pushed through one decoder. A hierarchical VAE stacks latent layers, so that coarse
# choices (which digit, roughly what shape) can be made at the top and refined below:
#
#     z_2 ~ N(0, I),    z_1 | z_2 ~ N(mu(z_2), diag sigma(z_2)^2),    x | z_1 ~ Bernoulli(f(z_1)).
#
# The prior of z_1 is now *learned*: p(z_1) = integral p(z_2) p(z_1 | z_2) dz_2 is itself
# a continuous mixture. The ELBO keeps its form, with one KL-like term per layer:
#
#     ELBO(x) = E_q[log p(x | z_1)]
#             - E_q[log q(z_1 | ...) - log p(z_1 | z_2)]       (layer 1)
#             - E_q[log q(z_2 | ...) - log p(z_2)]             (layer 2)
#
# The question is how to build q. `HierarchicalVAE` offers two guides:
#
# - `"markov"` (bottom-up): q(z_1 | x) q(z_2 | z_1), the obvious mirror image of the model;
# - `"ladder"` (top-down): a deterministic bottom-up pass summarizes x at every depth, then
#   q samples z_2 first and combines, at layer 1, the bottom-up evidence with the model's
#   own prior p(z_1 | z_2) by a precision-weighted average of the two Gaussians. Inference
#   runs in the same order as generation and reuses the generative network.
#
# The well-known failure of deep hierarchies is that upper layers go unused: their KL term
# falls to zero and q(z_2 | .) equals the prior. Measuring the KL per layer shows whether
# that happened.
#
# Runtime: about 2 minutes in full mode, about 20 s with `LVM_PYRO_SMOKE=1` (2 CPU cores).

# %%
import numpy as np
import torch
from _common import SMOKE, runtime, save
from matplotlib.figure import Figure
from pyro import poutine

from lvm_pyro import elbo, fit
from lvm_pyro.data import load_digits
from lvm_pyro.diagnostics import plots
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.hierarchical import HierarchicalVAE
from lvm_pyro.models.vae import VAE

# %% [markdown]
# ## Three models, one budget
#
# A one-layer VAE with a 16-dimensional code, and two-layer models (16 then 8 dimensions)
# with each guide, all trained with the same optimizer, epochs and KL warm-up.

# %%
digits = load_digits(binarize=8)
x_train, x_val, x_test, y_test = digits.train.x, digits.val.x, digits.test.x, digits.test.y
epochs = 8 if SMOKE else 200
settings = dict(epochs=epochs, batch_size=64, lr=1e-3, val_data=x_val, kl_warmup=epochs // 3,
                progress=False, seed=0)
builders = {
    "VAE (16)": lambda: VAE((64,), latent_dim=16, hidden=(256, 256)),
    "HVAE markov (16, 8)": lambda: HierarchicalVAE((64,), latent_dims=(16, 8), hidden=(256, 256),
                                                   guide="markov"),
    "HVAE ladder (16, 8)": lambda: HierarchicalVAE((64,), latent_dims=(16, 8), hidden=(256, 256),
                                                   guide="ladder"),
}
models, runs = {}, {}
for name, build in builders.items():
    torch.manual_seed(0)  # the same initial weights wherever the architectures agree
    models[name] = m = build()
    runs[name] = fit(m, x_train, **settings)
    print(f"{name:<20} {runs[name].wall_time:6.1f} s, validation ELBO {runs[name].val_elbo[-1]:.3f}")

# %% [markdown]
# ## The ELBO, log p(x), and the information in each layer
#
# For each model: the test ELBO, the importance-sampled test log p(x), and per latent layer
# the average of log q(z_i | .) - log p(z_i | parent) over draws from q, the "rate" (in
# nats) that the layer spends on describing x. A layer with rate near 0 is unused. The
# rates come straight from Pyro: trace the guide, replay the model on the same draws, and
# read each site's log-density from both traces.


# %%
@torch.no_grad()
def rates(model, x: torch.Tensor, sites: list[str], draws: int = 50) -> dict[str, float]:
    """(1/N) sum_n E_q[log q(z_i | .) - log p(z_i | parent)] for each latent site z_i."""
    model.eval()
    total = dict.fromkeys(sites, 0.0)
    for _ in range(draws):
        guide_trace = poutine.trace(model.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
        for site in sites:
            value = guide_trace.nodes[site]["value"]
            log_q = guide_trace.nodes[site]["fn"].log_prob(value)
            log_p = model_trace.nodes[site]["fn"].log_prob(value)
            total[site] += float((log_q - log_p).mean()) / draws
    model.train()
    return total


k = 100 if SMOKE else 1000
table = {}
for name, m in models.items():
    sites = ["z"] if isinstance(m, VAE) else m.site_names
    table[name] = dict(
        elbo=elbo(m, x_test, num_particles=10, seed=0),
        ll=log_likelihood(m, x_test, num_samples=k, seed=0),
        rates=rates(m, x_test, sites, draws=10 if SMOKE else 50),
    )
print(f"{'model':<20} {'test ELBO':>9} {'log p(x)':>16}   rate per layer (nats)")
for name, r in table.items():
    layer_rates = ", ".join(f"{s}: {v:.2f}" for s, v in r["rates"].items())
    print(f"{name:<20} {r['elbo']:9.3f} {r['ll'].mean:9.3f} +- {r['ll'].stderr:.2f}   {layer_rates}")
    assert r["ll"].mean > r["elbo"], "the importance-weighted estimate tightens the ELBO"
    assert all(v > -0.05 for v in r["rates"].values()), "a layer's rate is an average KL: not negative"

# %% [markdown]
# What to look for:
#
# - the rates plus the reconstruction term make up the ELBO; a layer whose rate is near
#   0 is unused: its q equals its prior for every x, and the model is a one-layer VAE in
#   disguise;
# - the gap between the ELBO and log p(x) is the price of the guide.
#
# In the full-mode run (numbers in `tutorials/README.md`) the two guides behave very
# differently. With the Markov guide both layers carry information (a few nats each) and
# the model's log p(x) edges past the one-layer VAE's (by about 0.1 nats, less than the
# spread over test images). With the ladder guide the top layer *collapses* (rate under
# 0.1 nats, across several seeds we tried): the top-down guide lets q(z_1 | z_2, x) get everything it
# needs from the bottom-up pass, so the cheapest way to raise the ELBO is to make
# p(z_1 | z_2) ignore z_2 and pay no KL for it. A deeper model is not automatically a
# better one; the per-layer rate is how to tell. (Remedies in the literature: longer KL
# warm-up, "free bits" per layer, batch-normalized bottom-up paths.)
#
# ## What the top layer encodes
#
# For the two-layer model whose top layer carries the most information: the top layer's
# posterior mean E_q[z_2 | x] for the test digits, coloured by label; and a grid of samples
# where each *row* shares one top-level draw z_2 and each column draws a different
# z_1 ~ p(z_1 | z_2): the rows show what z_2 fixes, the columns what z_1 still varies.

# %%
best = max((name for name in models if name.startswith("HVAE")), key=lambda name: table[name]["rates"]["z2"])
hvae = models[best]
print(f"top layer most used by: {best} (rate {table[best]['rates']['z2']:.2f} nats)")
top_codes = hvae.encode(x_test, layer=2).mean
save(plots.plot_latent(top_codes, y_test, title=f"{best}: E_q[z_2 | x] (PCA)"), "05_hvae_top_layer.png")

torch.manual_seed(3)
rows, cols = 6, 8
with torch.no_grad():
    z2 = torch.randn(rows, 1, hvae.latent_dims[1]).expand(rows, cols, hvae.latent_dims[1])
    loc, scale = hvae.priors[0](z2)  # p(z_1 | z_2): the generative network between the layers
    z1 = loc + scale * torch.randn_like(loc)
    images = hvae.decode(z1.reshape(rows * cols, -1)).mean
save(plots.plot_samples(images, (8, 8), ncols=cols, title="each row: one z_2, eight draws of z_1 | z_2"),
     "05_hvae_samples.png")

# %% [markdown]
# ## Training curves
#
# The validation ELBO per epoch of the three models (higher is better).

# %%
fig = Figure(figsize=(6.5, 3.8), layout="constrained")
ax = fig.subplots()
for name, run in runs.items():
    ax.plot(np.arange(1, len(run.val_elbo) + 1), run.val_elbo, label=name)
ax.set_ylim(max(min(min(r.val_elbo) for r in runs.values()), -40), None)
ax.set_xlabel("epoch")
ax.set_ylabel("validation ELBO per image")
ax.legend()
save(fig, "05_hvae_curves.png")

# %%
print("\nKey numbers")
for name, r in table.items():
    print(f"  {name}: test ELBO {r['elbo']:.2f}, log p(x) {r['ll'].mean:.2f} (k={k}), rates "
          + ", ".join(f"{s} {v:.1f}" for s, v in r["rates"].items()))
print(f"  runtime {runtime()}")
