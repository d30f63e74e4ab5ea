"""Which device and dtype a model runs on, and how much memory is free there.

CUDA when present (bf16, or fp16 where the GPU lacks bf16), else the CPU: bf16 when the
CPU has native bf16 instructions (AVX512-BF16 or AMX), fp32 otherwise. Override with
the environment variables CLINBENCH_DEVICE (cpu|cuda) and CLINBENCH_DTYPE
(float32|bfloat16|float16), or per call.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")  # torch's names (torch is imported when a placement is used, not with this module)


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda"
    dtype: str  # one of DTYPES

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    def describe(self) -> str:
        import torch

        name = torch.cuda.get_device_name(0) if self.device == "cuda" else "CPU"
        return f"{self.device} ({name}), {self.dtype}"


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU runs bf16 matrix products in hardware (AMX), where bf16 is faster than fp32.

    AVX512-BF16 alone is not enough: measured with oneDNN limited to it (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16) on an AMX
    machine, MiniLM embedding in bf16 took 1.5x as long as in fp32, and 4.4x as long as with AMX."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return " amx_bf16" in flags


def choose(device: str | None = None, dtype: str | None = None) -> Placement:
    """The placement for a run: explicit arguments, then environment, then the best available."""
    import torch

    device = device or os.environ.get("CLINBENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is visible to torch; use --device cpu.")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"Unknown device {device!r}; use 'cpu' or 'cuda'.")
    dtype = dtype or os.environ.get("CLINBENCH_DTYPE")
    if dtype is None:
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if cpu_has_bf16() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    return Placement(device, dtype)


def free_memory_bytes(device: str) -> int:
    """Memory that a new model could use on `device` right now."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    return int(psutil.virtual_memory().available)
