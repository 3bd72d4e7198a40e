"""The amortization gap of a VAE: its encoder against per-point guides fitted for it.

A workflow that trains (``fit`` on a ``BlackBoxVI`` initialized from the encoder) and then
evaluates (``elbo``); it lives here, above ``lvm_pyro.infer``, so that evaluation never
imports training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lvm_pyro.checks import check_count, check_positive, check_seed
from lvm_pyro.errors import ConfigurationError
from lvm_pyro.infer.evaluate import elbo
from lvm_pyro.infer.svi import fit
from lvm_pyro.models.blackbox import BlackBoxVI
from lvm_pyro.models.vae import VAE

__all__ = ["AmortizationGap", "amortization_gap"]


@dataclass(frozen=True)
class AmortizationGap:
    """ELBO per data point with the amortized encoder and with optimized per-point guides.

    ``gap = elbo_local - elbo_amortized`` (nats per data point, >= 0 up to optimization and
    Monte Carlo error); ``local`` is the fitted :class:`BlackBoxVI`.
    """

    elbo_amortized: float
    elbo_local: float
    local: BlackBoxVI = field(repr=False)

    @property
    def gap(self) -> float:
        return self.elbo_local - self.elbo_amortized

    def __repr__(self) -> str:
        return (f"AmortizationGap(gap {self.gap:.4f} nats/point: ELBO {self.elbo_local:.4f} with "
                f"per-point guides, {self.elbo_amortized:.4f} with the encoder)")


def amortization_gap(
    vae: VAE,
    x,
    *,
    steps: int = 1000,
    lr: float = 0.01,
    num_particles: int = 100,
    seed: int | None = 0,
) -> AmortizationGap:
    """Fit per-point guides on x for the fixed ``vae`` and compare ELBOs with the encoder's.

    gap = (1/N) sum_i [ELBO(x_i; q_i) - ELBO(x_i; q(z | x_i))], each ELBO estimated with
    ``num_particles`` samples per point; the q_i start at the encoder's q(z | x_i) and take
    ``steps`` full-batch Adam steps (4 samples each) at ``lr``.

    Example:
        >>> import torch
        >>> from lvm_pyro.models.vae import VAE
        >>> vae = VAE((64,), latent_dim=2, hidden=(16,))
        >>> x = torch.randint(0, 2, (20, 64)).float()
        >>> result = amortization_gap(vae, x, steps=50, num_particles=10)
        >>> result.gap > 0
        True
    """
    if not isinstance(vae, VAE):
        raise ConfigurationError(
            f"amortization_gap compares a VAE's encoder with per-point guides; got a "
            f"{type(vae).__name__}: pass a trained lvm_pyro.VAE"
        )
    check_count(steps, "steps")
    check_count(num_particles, "num_particles")
    check_positive(lr, "lr")
    check_seed(seed)
    x = vae.validate(x, "x")
    local = BlackBoxVI(vae, len(x)).init_from_encoder(x)
    data = local.with_index(x)
    fit(local, data, steps=steps, lr=lr, num_particles=4, batch_size=len(x), kl_warmup=0,
        progress=False, seed=seed, device=next(vae.parameters()).device)
    return AmortizationGap(
        elbo_amortized=elbo(vae, x, num_particles=num_particles, seed=seed),
        elbo_local=elbo(local, data, num_particles=num_particles, seed=seed),
        local=local,
    )

