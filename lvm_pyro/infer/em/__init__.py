"""``em``: expectation-maximization for Pyro models with discrete latent sites.

- :mod:`.driver`: ``em()`` itself, its routes (the model's own closed form, Pyro's enumeration)
  and ``EMResult``.
- :mod:`.chain`: a user's mixture or ``pyro.markov`` chain (HMM) of exponential-family sites
  over ``pyro.param`` gathers, compiled once and certified against Pyro's contraction; its
  E-step one batched forward-backward pass (Baum-Welch speed).
- :mod:`.chain_statistics`: the compiled chain's closed-form M-step as expected sufficient
  statistics and their solve.
- :mod:`.online_chain`: online EM (``em(..., batch_size=)``) on such a model.
"""

from lvm_pyro.infer.em.driver import (
    E_STEPS,
    INITS,
    EMResult,
    EMState,
    ReseedEvent,
    _enum_e_step,  # noqa: F401  (the benchmark and tests reach the E-step pieces here)
    _EnumRoute,  # noqa: F401
    _trace_enum,  # noqa: F401
    em,
)

__all__ = ["E_STEPS", "INITS", "EMResult", "EMState", "ReseedEvent", "em"]
