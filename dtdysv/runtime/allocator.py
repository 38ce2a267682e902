"""glibc's malloc tuned for PyTorch on CPU: freed memory is kept for the next step, not handed back to the kernel.

With glibc's defaults, freed blocks above the trim and (dynamic) mmap thresholds go back to the kernel, so every step
faults in and zeroes the same pages again. ``tune_cpu_allocator`` fixes the mmap threshold at glibc's 64-bit ceiling and
raises the trim threshold (the effect of jemalloc/tcmalloc, as PyTorch's CPU performance guide advises), at the cost of
keeping up to ``TRIM_THRESHOLD`` of freed heap resident. Without glibc (or with another allocator preloaded) nothing
changes; GPU runs keep glibc's defaults.
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
    """Set glibc's mmap and trim thresholds; True if set. Call once, early: it applies to the whole process and to
    DataLoader workers forked later."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library the process already runs on
    if mallopt is None:  # not glibc
        return False
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("glibc malloc thresholds %s", "set" if done else "refused")
    return done


def tune_allocator_for(device: torch.device) -> bool:
    """``tune_cpu_allocator()`` for a CPU run, nothing otherwise; call before DataLoader workers start."""
    if device.type != "cpu":
        return False
    return tune_cpu_allocator()
