"""MixupDataLoader: blends each training batch with a re-paired copy of itself.

One weight lam ~ Beta(alpha, alpha) is drawn per batch and folded to max(lam, 1 - lam),
so every sample keeps the larger share of itself. The batch is blended with a
permutation of itself made of random pairs (i <-> j): each output then depends on
exactly two inputs, and the blend is written straight into the collated batch in
one pass over memory instead of collating first and mixing after.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from brain_gen.config.errors import ConfigError
from brain_gen.config.schema import MixupOptions
from brain_gen.dataset.datasets import IGNORE_INDEX
from brain_gen.dataset.mulaw import mu_law_encode
from brain_gen.memory import empty_huge_page_backed


def _first_float_position(inputs: Any) -> int | None:
    """Index of the first floating tensor in a tuple of inputs, or None."""
    for position, item in enumerate(inputs):
        if torch.is_tensor(item) and item.is_floating_point():
            return position
    return None


def sample_problems(options: MixupOptions, sample: tuple[Any, torch.Tensor], mix: bool = True) -> list[str]:
    """What keeps MixUp from working on samples like this ``(inputs, targets)`` pair.

    Checked before training on the dataset's first sample, and by the collate on its
    first batch (for loaders built outside a config).
    """
    inputs, targets = sample
    problems = []
    if _first_float_position(inputs if isinstance(inputs, (tuple, list)) else [inputs]) is None:
        problems.append(
            "datasplitter.dataset_class: MixupDataLoader blends floating-point inputs, but the dataset gives "
            f"{getattr(inputs, 'dtype', type(inputs).__name__)} inputs; use ChunkDatasetContinuous (with target: codes to train on codes)"
        )
    if mix and not targets.is_floating_point() and options.num_classes is None:
        problems.append("dataloader.num_classes: the targets are integer classes, so MixupDataLoader needs num_classes to one-hot them")
    return problems


def _new_batch_tensor(like: torch.Tensor, batch_size: int) -> torch.Tensor:
    """An uninitialised [batch, *like.shape] tensor for a collated batch.

    Inside a worker it lives in shared memory, as default_collate does, so the batch
    reaches the main process without a copy. In the main process it is huge-page backed,
    which makes filling it several times faster (see brain_gen.memory).
    """
    shape = (batch_size, *like.shape)
    if get_worker_info() is not None:
        storage = like._typed_storage()._new_shared(like.numel() * batch_size, device=like.device)
        return like.new(storage).resize_(shape)
    if like.device.type == "cpu":
        return empty_huge_page_backed(shape, like.dtype)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def stack_batch(samples: list[torch.Tensor]) -> torch.Tensor:
    """Collate same-shaped tensors into one batch tensor, in the memory ``mix_pairs`` uses."""
    return torch.stack(samples, out=_new_batch_tensor(samples[0], len(samples)))


def mix_pairs(samples: list[torch.Tensor], pairs: list[tuple[int, int]], lam: float) -> torch.Tensor:
    """Collate ``samples`` while blending each pair: out[i] = lam*x[i] + (1-lam)*x[j] and vice versa."""
    out = _new_batch_tensor(samples[0], len(samples))
    for i, j in pairs:
        if i == j:
            out[i].copy_(samples[i])
            continue
        torch.lerp(samples[j], samples[i], lam, out=out[i])
        torch.lerp(samples[i], samples[j], lam, out=out[j])
    return out


def one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot targets; ignored positions (-100) become all-zero rows."""
    kept = targets != IGNORE_INDEX
    if ((targets < 0) & kept).any() or (targets >= num_classes).any():
        raise ConfigError(
            f"dataloader.num_classes: targets run from {int(targets[kept].min())} to {int(targets.max())}, "
            f"outside 0..{num_classes - 1}; set num_classes to the number of classes"
        )
    encoded = torch.nn.functional.one_hot(targets.clamp(min=0), num_classes).float()
    return encoded * kept.unsqueeze(-1)


class MixupCollate:
    """The collate function of MixupDataLoader (a class, so worker processes can pickle it)."""

    def __init__(self, options: MixupOptions | None = None, mix: bool = True, seed: int | None = None, rank: int | None = None, **keywords: Any):
        """``options``, or its keys as keywords (``mixup_alpha=0.4``); defaults are MixupOptions'.

        The draws (whether to mix, lam, the pairs) come from a stream of this collate's
        own, made from ``seed`` (default: torch's seed in force when the collate is made),
        the process's global rank (default: read from torch.distributed when a process
        group is up) and the loader worker's seed, or, in the loader's own process, the
        seed of the loader's ``generator`` (``loader_generator``). So the ranks of a
        distributed run and the workers of a loader each mix differently, and a run whose
        loader generator is seeded per epoch (brain-gen's training order does that) mixes
        every epoch the same way, resumed or not.
        """
        self.options = MixupOptions.take(options, keywords)
        if keywords:
            raise TypeError(f"MixupCollate got unknown arguments: {', '.join(keywords)}")
        self.mix = mix
        self.seed = torch.initial_seed() if seed is None else seed
        if rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
        self.rank = rank
        self.loader_generator: torch.Generator | None = None
        self._stream: tuple[Any, np.random.Generator] | None = None
        self._checked = False

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers key their draws on their own seed, never on the loader's generator.
        return {**self.__dict__, "loader_generator": None, "_stream": None}

    def random(self) -> np.random.Generator:
        """The random stream of this rank, in this process (the loader's own, or one of its workers)."""
        worker = get_worker_info()
        # A worker's seed is drawn afresh for every epoch's workers (unless they persist), from
        # the loader's generator, so each epoch's workers mix differently and reproducibly.
        if worker is not None:
            owner: Any = (worker.id, worker.seed)
        else:
            owner = None if self.loader_generator is None else self.loader_generator.initial_seed()
        if self._stream is None or self._stream[0] != owner:
            entropy = [self.seed, self.rank] + ([worker.seed] if worker is not None else [] if owner is None else [owner])
            self._stream = (owner, np.random.default_rng(entropy))
        return self._stream[1]

    def draw_weight(self) -> float | None:
        """This batch's lam, or None when the batch is not mixed."""
        alpha = self.options.mixup_alpha
        if not self.mix or alpha <= 0 or self.random().random() >= self.options.mixup_prob:
            return None
        lam = float(self.random().beta(alpha, alpha))
        return max(lam, 1.0 - lam)

    def __call__(self, batch: list[tuple[Any, torch.Tensor]]) -> tuple[Any, torch.Tensor]:
        if not self._checked:
            problems = sample_problems(self.options, batch[0], self.mix)
            if problems:
                raise ConfigError(problems)
            self._checked = True
        inputs = [sample[0] for sample in batch]
        targets = [sample[1] for sample in batch]
        integer_targets = not targets[0].is_floating_point()
        num_classes = self.options.num_classes
        lam = self.draw_weight()
        order = self.random().permutation(len(batch)).tolist()
        pairs = [(order[k], order[k + 1]) for k in range(0, len(order) - 1, 2)]
        if len(order) % 2:
            pairs.append((order[-1], order[-1]))

        # Inputs: only the first floating tensor is blended; positions, channel types and
        # other tensors of a tuple input are collated untouched.
        tuple_input = isinstance(inputs[0], (tuple, list))
        position = _first_float_position(inputs[0] if tuple_input else [inputs[0]])
        signals = [item[position] for item in inputs] if tuple_input else inputs
        mixed = mix_pairs(signals, pairs, lam) if lam is not None else stack_batch(signals)
        if self.options.quantize:
            mixed = mu_law_encode(mixed, self.options.mu, self.options.max_val)
        if tuple_input:
            collated = list(default_collate([tuple(item) for item in inputs]))
            collated[position] = mixed
            batch_inputs: Any = type(inputs[0])(collated) if isinstance(inputs[0], tuple) else collated
        else:
            batch_inputs = mixed

        if not self.mix:
            return batch_inputs, default_collate(targets)
        if integer_targets:
            # Soft targets on every training batch, mixed or not, so the loss sees one kind.
            targets = [one_hot(target, num_classes) for target in targets]
        batch_targets = mix_pairs(targets, pairs, lam) if lam is not None else stack_batch(targets)
        return batch_inputs, batch_targets


class MixupDataLoader(DataLoader):
    """A DataLoader whose batches are MixUp blends (training) or quantized only (``mix=False``).

    Batches are ``(inputs, targets)``: float inputs ``[B, C, T]`` (int64 codes with
    ``quantize``), and targets blended as the dataset gives them (float ``[B, C, T]``)
    or, for integer targets, probabilities ``[B, ..., num_classes]``.

    Args:
        dataset: any dataset of ``(inputs, targets)`` pairs.
        options: :class:`~brain_gen.config.schema.MixupOptions` (the `dataloader` keys
            mixup_alpha, mixup_prob, num_classes, quantize, mu, max_val), or those keys
            as keywords. Integer targets are one-hot encoded with ``num_classes`` and
            blended into probabilities; with ``quantize``, inputs are divided by
            ``max_val`` after mixing and mu-law encoded with ``mu`` into int64 codes.
        mix: False for validation and test loaders: same quantization, no mixing.
        seed: where the mixing draws come from (see :class:`MixupCollate`).
        **kwargs: any torch DataLoader argument (batch_size, shuffle, num_workers, ...).
    """

    def __init__(self, dataset, options: MixupOptions | None = None, mix: bool = True, seed: int | None = None, **kwargs: Any):
        if "collate_fn" in kwargs:
            raise ValueError("MixupDataLoader makes its own collate_fn")
        self.mixup = MixupCollate(MixupOptions.take(options, kwargs), mix, seed)
        super().__init__(dataset, collate_fn=self.mixup, **kwargs)
        self.mixup.loader_generator = self.generator
