"""glibc's malloc tuned for PyTorch on CPU: freed memory is kept for the next step, not handed back to the kernel.

PyTorch allocates CPU tensors with malloc and frees them when the last reference goes. With glibc's defaults, a
freed block at the top of the heap beyond the trim threshold is returned to the kernel, and blocks above the
(dynamic) mmap threshold are unmapped, so the next step's tensors of the same sizes fault their pages in again
and the kernel zeroes every page: measured here, 20-35 thousand page faults (100+ MB zeroed) per x0.50
inference batch, about 8% of the CPU time. ``tune_cpu_allocator`` fixes the mmap threshold at glibc's 64-bit
ceiling and raises the trim threshold, so a training or inference loop reuses its heap: the effect of running
under jemalloc or tcmalloc (``LD_PRELOAD``), as PyTorch's CPU performance guide advises, without installing one.
The cost: the process keeps up to ``TRIM_THRESHOLD`` of freed heap resident (a loop's peak is reused anyway).
Not glibc (macOS, musl) or an allocator preloaded in its place: nothing changes. GPU runs keep glibc's defaults
(``tune_allocator_for``): their tensors live in CUDA's caching allocator, and the host heap stays small.
"""

from __future__ import annotations

import ctypes
import logging
import sys

import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # larger blocks are still mapped and unmapped; glibc's ceiling on 64-bit
TRIM_THRESHOLD = 1 << 30  # free heap kept at the top before any goes back to the kernel


def tune_cpu_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if they were set. Call once, early:
    it applies to the whole process (DataLoader workers forked later inherit it)."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library the process already runs on
    if mallopt is None:  # not glibc
        return False
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("glibc malloc thresholds %s", "set" if done else "refused")
    return done


def tune_allocator_for(device: torch.device) -> bool:
    """``tune_cpu_allocator()`` for a run on the CPU, nothing for any other device; True if the thresholds were set.
    Call once, as soon as the run's device is known and before the DataLoader workers start."""
    if device.type != "cpu":
        return False
    return tune_cpu_allocator()
