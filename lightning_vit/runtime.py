"""Process settings of the command line (``python -m lightning_vit``), applied before the command runs.

:func:`tune_malloc`: on Linux with glibc, tensors up to 32 MB come from the heap and the heap is not handed back to
the system after each step. glibc's defaults return freed memory as soon as its top exceeds a threshold that a
training step's rise and fall of activations passes every step, and map large blocks afresh on each allocation;
every page then faults again on its next use, and the kernel zeroes it. Training steps in bf16 (batch 8, 224,
2 threads, AMD EPYC, fused AdamW), five pairs of processes with and without these settings: Swin-T took 67,000-79,000
page faults per step with glibc's defaults and 150-1,200 with these, and its median step 1069 -> 989 ms on average
(faster in all five pairs); CoaT-Lite Tiny 10,000-34,000 -> 0-1,200 faults, 652 -> 634 ms (faster in four of five).
Peak resident memory changed by -1% to +3%. ``LIGHTNING_VIT_MALLOC=default`` keeps glibc's defaults. The library
never changes them on import; call the function to get the same in your own scripts.

:func:`cpu_bf16_kernels`: whether this CPU has bf16 kernels (oneDNN's, which need avx512). Without them every
bf16 matmul and convolution is emulated: on an AVX2-only AMD EPYC (2 threads, CoaT-Lite Tiny, batch 8 at 224) bf16
inference ran at 2.5 img/s against 21.3 in fp32, and a training step at 0.32 against 8.2. The command line then
runs a ``bf16-mixed`` recipe in ``32-true`` (see :mod:`lightning_vit.cli`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

import torch

__all__ = ["cpu_bf16_kernels", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts (half its 64 MB heap size) and its dynamic maximum
_TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept (mallopt takes an int): in effect never trimmed


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds as above; False (nothing changed) off glibc, or when the environment
    says ``LIGHTNING_VIT_MALLOC=default``."""
    if os.environ.get("LIGHTNING_VIT_MALLOC", "").lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


@functools.cache
def cpu_bf16_kernels() -> bool:
    """Whether oneDNN runs bf16 on this CPU (avx512_core or newer; AMX and avx512_bf16 make it fast). False on
    AVX2-only processors, where oneDNN cannot even build a bf16 matmul, and in builds without oneDNN."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())
