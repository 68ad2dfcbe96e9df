"""What this machine has: CPU cores, RAM, and GPUs (via NVIDIA's NVML when the nvidia-ml-py package and a
driver are present; otherwise the caller falls back to what the backend reports, e.g. Ollama's size_vram)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import psutil

__all__ = ["Resources", "probe_resources"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    cpu_cores: int
    ram_mb: int
    gpu_count: int
    gpu_memory_mb: int  # total over GPUs
    gpu_source: str  # "nvml", or "none" when the GPU figures must come from the backend


def probe_resources() -> Resources:
    cores = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    ram = psutil.virtual_memory().total // 2**20
    count, memory, source = _nvml_gpus()
    return Resources(cpu_cores=cores, ram_mb=ram, gpu_count=count, gpu_memory_mb=memory, gpu_source=source)


def _nvml_gpus() -> tuple[int, int, str]:
    try:
        import pynvml  # from the optional nvidia-ml-py package
    except ImportError:
        return 0, 0, "none"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML present but unusable (%s): GPU figures come from the backend", exc)
        return 0, 0, "none"
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        total = sum(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in handles)
        return len(handles), total // 2**20, "nvml"
    finally:
        pynvml.nvmlShutdown()
