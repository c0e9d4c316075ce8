"""Host memory for large, freshly filled tensors (collated batches, checkpoint snapshots)."""

from __future__ import annotations

import math
import mmap

import torch

# Below this size a tensor spans only a few pages and how it is allocated does not matter.
HUGE_PAGE_MIN_BYTES = 4 << 20
PAGE_ALIGNED_MIN_BYTES = 1 << 20


def _mapped_tensor(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, advice: int | None) -> torch.Tensor | None:
    """An uninitialised tensor in its own anonymous mapping (page-aligned), or None if mmap fails."""
    try:
        memory = mmap.mmap(-1, math.prod(shape) * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if advice is not None:
            memory.madvise(advice)
    except (AttributeError, OSError, ValueError):
        return None
    # frombuffer keeps a reference to the mapping: it is unmapped when the tensor is freed.
    return torch.frombuffer(memory, dtype=dtype).view(shape)


def empty_huge_page_backed(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor in fresh memory that the kernel may back with 2 MiB pages.

    Filling a fresh allocation costs a page fault per 4 KiB page, in which the kernel
    zero-fills and maps the page. For an 80 MB batch those 20,000 faults take about
    three times as long as copying the data itself. Memory advised MADV_HUGEPAGE is
    mapped in 2 MiB pages instead: 40 faults. Where the platform has no such advice
    (not Linux), or the tensor is small, this is plain ``torch.empty``.
    """
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and math.prod(shape) * dtype.itemsize >= HUGE_PAGE_MIN_BYTES:
        tensor = _mapped_tensor(shape, dtype, advice)
        if tensor is not None:
            return tensor
    return torch.empty(shape, dtype=dtype)


def empty_page_aligned(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose data starts on a page boundary when it is 1 MiB or more.

    Direct I/O can send page-aligned memory to the disk without a copy (see
    brain_gen.training.checkpointing). Small tensors come from ``torch.empty``. From
    4 MiB on the memory is also advised for 2 MiB pages, as in
    ``empty_huge_page_backed``: filling hundreds of MB of fresh memory costs a page
    fault per 4 KiB page, several times the copy itself, and where the kernel hands out
    huge pages that drops to one fault per 2 MiB. (Where it does not, the snapshot
    memory is still faulted in off the training thread: ``prepare_snapshot_memory``.)
    """
    size = math.prod(shape) * dtype.itemsize
    if size >= PAGE_ALIGNED_MIN_BYTES:
        huge = getattr(mmap, "MADV_HUGEPAGE", None) if size >= HUGE_PAGE_MIN_BYTES else None
        tensor = _mapped_tensor(shape, dtype, huge)
        if tensor is not None:
            return tensor
    return torch.empty(shape, dtype=dtype)
