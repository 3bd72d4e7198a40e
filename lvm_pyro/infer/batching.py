"""Minibatches on the data's device, in a resumable seeded order.

User data (a tensor, an array, a tuple of them, or a torch DataLoader) becomes a
:class:`Batches` object: it knows the number of data points N, yields equal-size
minibatches as tuples of tensors, and can save and restore its shuffling state, so a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from lvm_pyro.checks import check_int
from lvm_pyro.data import validate_with_conditions
from lvm_pyro.errors import DataError, DataTypeError
from lvm_pyro.models.base import Program

DEFAULT_BATCH_SIZE = 128


class Batches:
    """Shuffled minibatches of in-memory tensors (all on one device).

    Training (``shuffle=True``): every epoch is a fresh permutation drawn from a private
    generator and the final partial batch is dropped when N is not a multiple of the batch
    size (a different random remainder each epoch), so every step sees B points and is
    scaled by N / B. Evaluation (``shuffle=False``): every point once, in order.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool, seed: int):
        self.tensors = tensors
        self.num_data = tensors[0].shape[0]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start_state = self.generator.get_state()

    @property
    def steps_per_epoch(self) -> int:
        if self.shuffle:
            return max(self.num_data // self.batch_size, 1)
        return -(-self.num_data // self.batch_size)

    def epoch(self, skip: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch of batches; ``skip`` batches are passed over (resuming mid-epoch)."""
        self.epoch_start_state = self.generator.get_state()
        n, b = self.num_data, self.batch_size
        if b == n:
            yield self.tensors
            return
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.tensors[0].device)
        for i in range(skip, self.steps_per_epoch):
            if self.shuffle:
                idx = order[i * b:(i + 1) * b]
                yield tuple(t[idx] for t in self.tensors)
            else:
                yield tuple(t[i * b:(i + 1) * b] for t in self.tensors)

    def shuffle_state(self, at_epoch_boundary: bool) -> torch.Tensor:
        """The generator state a resumed run starts its current (or next) epoch from."""
        return self.generator.get_state() if at_epoch_boundary else self.epoch_start_state

    def rewind_epoch(self, state: torch.Tensor) -> None:
        """Set the shuffling generator to the start of an epoch (for resume)."""
        self.generator.set_state(state)


class LoaderBatches:
    """Minibatches from a user's torch DataLoader, moved to ``device`` as they come.

    The loader owns shuffling; resuming replays from the start of the interrupted epoch
    and is exact only if the loader's own sampler is seeded.
    """

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader = loader
        self.device = device
        self.num_data = len(loader.dataset)
        self.batch_size = loader.batch_size or 1
        self.epoch_start_state = torch.zeros(0, dtype=torch.uint8)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def epoch(self, skip: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        for i, batch in enumerate(self.loader):
            if i < skip:
                continue
            batch = batch if isinstance(batch, (tuple, list)) else (batch,)
            yield tuple(t.to(self.device) for t in batch)

    def shuffle_state(self, at_epoch_boundary: bool) -> torch.Tensor:
        """No state of ours: the DataLoader owns its order."""
        return self.epoch_start_state

    def rewind_epoch(self, state: torch.Tensor) -> None:
        """Nothing to rewind: the DataLoader owns its order."""


def make_batches(
    data,
    program: Program,
    device: torch.device,
    *,
    batch_size: int | None,
    shuffle: bool = True,
    seed: int = 0,
    name: str = "data",
    max_batch_size: int = DEFAULT_BATCH_SIZE,
) -> Batches | LoaderBatches:
    """Validate ``data`` once and wrap it as minibatches on ``device``.

    ``data`` is x (a tensor, array or nested list), or a tuple (x, cond, ...) whose extra
    entries are per-example conditions (labels, covariates) passed to the model after x.
    A ``batch_size`` larger than N is clamped to N with a warning; None means
    min(N, ``max_batch_size``).
    """
    if isinstance(data, DataLoader):
        first = next(iter(data), None)
        if first is None:
            raise DataError(f"{name} is a DataLoader that yields no batches: give it a non-empty dataset")
        first = first if isinstance(first, (tuple, list)) else (first,)
        if not first or not all(torch.is_tensor(t) for t in first):
            raise DataTypeError(
                f"{name} is a DataLoader whose batches are {type(first[0] if first else first).__name__}, "
                "not tensors: yield x or a tuple (x, cond, ...) of tensors (e.g. a TensorDataset)"
            )
        program.validate(first[0], name=f"first batch of {name}")
        return LoaderBatches(data, device)
    x, *conds = (t.to(device) for t in validate_with_conditions(data, program.validate, name=name))
    n = x.shape[0]
    if batch_size is None:
        batch_size = min(n, max_batch_size)
    batch_size = check_int(batch_size, "batch_size", 1)
    if batch_size > n:
        warnings.warn(
            f"batch_size={batch_size} is larger than the {n} data points; using batch_size={n}",
            stacklevel=3,
        )
        batch_size = n
    return Batches((x, *conds), batch_size, shuffle, seed)

