"""``em``: expectation-maximization for Pyro models with discrete latent sites.

- :mod:`.driver`: ``em()`` itself, its routes (the model's own closed form, Pyro's enumeration)
  and ``EMResult``.
- :mod:`.closed_form`: closed-form M-steps found automatically for users' models
  (exponential-family sites whose parameters are ``pyro.param``s), each certified on Q before
  it is used.
- :mod:`.chain`: the E-step of a ``pyro.markov`` chain replayed and contracted as one batched
  forward-backward pass (Baum-Welch speed).
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
