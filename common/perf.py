"""Throughput, peak memory and MFU helpers.

MFU (model FLOPs utilisation) is achieved FLOP/s over the peak FLOP/s of the hardware. FLOPs per
step are counted by torch.utils.flop_counter on one real forward and backward pass, so they cover
matmuls and convolutions (the bulk of the work) and skip elementwise ops.
"""

import resource
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peak TFLOP/s per GPU from the vendors' data sheets (bf16/fp16 tensor cores, no sparsity).
GPU_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
    "4090": 165.0,
    "3090": 71.0,
}


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak bytes allocated by tensors. CPU: the process's peak resident set size (whole process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return max_rss / 2**20 if sys.platform == "darwin" else max_rss / 2**10


def count_flops(fn) -> int:
    """FLOPs that fn() runs through matmuls and convolutions (forward and backward if fn calls backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_cpu_peak_tflops(size: int = 1024, repeats: int = 10) -> float:
    """Best fp32 matmul throughput of this process's threads, a practical peak for CPU MFU."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool start and first-touch allocation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def peak_tflops(device: torch.device, configured: float) -> float:
    """Peak TFLOP/s for MFU: the configured value, a data-sheet value for known GPUs, or a CPU measurement."""
    if configured > 0:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value
        return 0.0  # unknown GPU: MFU is not reported
    if device.type == "cpu":
        return measure_cpu_peak_tflops()
    return 0.0


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float | None:
    """Fraction of peak (0..1) reached, or None when the peak or the FLOPs are unknown."""
    if peak <= 0 or flops_per_step <= 0 or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / (peak * 1e12)
