"""Model/guide pairs (one file a model) and the registry the command line reads."""

from lvm_pyro.models import transforms  # noqa: F401  (registers biject_to(positive_definite))
