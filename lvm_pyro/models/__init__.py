"""Model/guide pairs (one file or package a model) and the registry the command line reads.

Importing this package registers nothing with torch or Pyro (see
:mod:`lvm_pyro.models.transforms` for the positive-definite bijection, used explicitly)."""
