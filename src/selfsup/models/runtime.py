"""Where and how fast a model runs: the device, the precision and the memory layout.

Training, feature extraction, fine-tuning and ``embed`` share one fast path:

* :func:`select_device`: CUDA, then Apple MPS, then the CPU.
* :func:`choose_precision`: bf16 autocast on CUDA GPUs that support it (fp16 with loss
  scaling on older ones) and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX);
  fp32 elsewhere and when ``amp`` is off.  Weights, gradients, optimizer state and the
  losses (:mod:`selfsup.methods.losses` upcasts) stay float32.  On a CPU without native
  bf16, autocast would emulate it and run slower than fp32, so it stays off there.
* :func:`fast_layout`: channels-last weights for convolutions (their outputs then stay
  channels-last, which oneDNN and cuDNN run fastest) and, on a CPU, timm's explicit
  attention instead of the fused kernel, whose bf16 backward is slower than fp32 there.

Why bf16 on a CPU at all: on CPUs with AMX-BF16 a training step of ResNet-18 and of the
small CNN runs clearly faster under bf16 autocast than in fp32, while the float32 master
weights and losses keep the results of fp32 training (``benchmarks/bench_throughput.py``
measures it; its results are in ``docs/results.md``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from selfsup.errors import SelfSupError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SelfSupError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SelfSupError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return dev


def cpu_bf16_support() -> str | None:
    """The CPU's native bf16 instruction set ("AMX-BF16" or "AVX512-BF16"), or None."""
    cpu = getattr(torch, "cpu", None)
    if cpu is None:
        return None
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX-BF16"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


@dataclass(frozen=True)
class Precision:
    """The arithmetic a model runs in: ``dtype`` is the autocast dtype (None = fp32)."""

    device_type: str
    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    @property
    def needs_loss_scaling(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        """The context every forward pass of this precision runs in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_precision(device: torch.device | str, amp: bool = True) -> Precision:
    """bf16 autocast where the hardware has it (see the module docstring), else fp32."""
    device = torch.device(device)
    kind = device.type
    if not amp:
        return Precision(kind, None, "amp off")
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(kind, torch.bfloat16, "CUDA autocast")
        return Precision(kind, torch.float16, "CUDA autocast, no bf16 on this GPU: fp16 with loss scaling")
    if kind == "cpu":
        native = cpu_bf16_support()
        if native:
            return Precision(kind, torch.bfloat16, f"CPU autocast, native {native}")
        return Precision(kind, None, "this CPU has no native bf16")
    return Precision(kind, None, f"no autocast on {kind}")


def fast_layout(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Put ``module`` (in place) in the layout that runs fastest on ``device``; values and
    results are unchanged up to rounding, and calling it again is a no-op."""
    module.to(memory_format=torch.channels_last)  # 4-d weights only: convolutions
    explicit = torch.device(device).type == "cpu"
    for m in module.modules():
        if hasattr(m, "fused_attn"):  # timm Attention
            m.fused_attn = not explicit
    return module


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the system.

    PyTorch's CPU tensors come straight from ``malloc``; glibc serves blocks above its
    mmap threshold (at most 32 MB by default) with fresh ``mmap`` pages and unmaps them
    on free, so every training step page-faults its activations in again.  With large
    blocks kept on the heap most of those faults go away and a SimCLR step on ResNet-18
    runs faster (measurements in ``docs/results.md``); the process keeps its peak memory
    until it exits.  Returns False where this is not glibc (nothing changed)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        big = 2**31 - 1  # mallopt takes a C int
        return bool(libc.mallopt(m_mmap_threshold, big) and libc.mallopt(m_trim_threshold, big))
    except (OSError, AttributeError):
        return False
