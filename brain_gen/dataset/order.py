"""TrainingOrder: the order of the training windows, a function of the run's seed and the epoch alone.

Resuming a run must replay exactly what the uninterrupted run would have seen.
torch's RandomSampler draws each epoch's permutation from a random state that
goes on from epoch to epoch, so a resumed run, which starts that state afresh,
sees another order. Here each epoch's permutation, and the seed of that epoch's
loader workers, are made from (seed, epoch) only; a run that resumes inside an
epoch also skips the batches already trained.

It is a DistributedSampler (one rank's share of the order, as torch's), so that
Lightning keeps it under DDP instead of putting its own sampler in its place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler

from brain_gen.seeding import derive_seed


class TrainingOrder(DistributedSampler):
    """Shuffled training indices of one rank, the same for the same (seed, epoch) in every run.

    Args:
        dataset: a map-style dataset (its length is all that is read).
        seed: the run's seed.
        rank, world_size: this process's share of the order; 0 and 1 in one process.

    ``generator`` is the loader's: :meth:`set_epoch` reseeds it, so that the loader
    workers of an epoch (their seeds come from it) are the same in every run too.
    """

    def __init__(self, dataset: Sized, seed: int, rank: int = 0, world_size: int = 1):
        # drop_last=False: every rank gets the same number of windows, padded with a few repeats, as torch's.
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.generator = torch.Generator()
        self._skip_at_epoch: tuple[int, int] | None = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``: its order, and its workers' seeds through ``generator``."""
        self.epoch = epoch
        self.generator.manual_seed(derive_seed(self.seed, "loader workers", epoch, self.rank))

    def resume(self, epoch: int, skip: int) -> None:
        """Continue a run inside ``epoch``, leaving out the first ``skip`` indices of its order."""
        self.set_epoch(epoch)
        self._skip_at_epoch = (epoch, skip) if skip else None

    def batch_indices(self, epoch: int, batch_index: int, batch_size: int) -> list[int]:
        """The dataset indices of one batch of this rank's ``epoch``, recomputed from the seed."""
        share = self._share(epoch)
        return share[batch_index * batch_size : (batch_index + 1) * batch_size]

    def _share(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "training order", epoch))
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        # Padded to an equal share per rank, then this rank's share, as DistributedSampler does.
        padding = self.total_size - len(order)
        while padding > 0:
            order += order[:padding]
            padding = self.total_size - len(order)
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        share = self._share(self.epoch)
        skip = 0
        if self._skip_at_epoch is not None and self._skip_at_epoch[0] == self.epoch:
            skip = self._skip_at_epoch[1]
        self._skip_at_epoch = None
        # The length stays the whole epoch's: Lightning counts the skipped batches as done.
        return iter(share[skip:])
