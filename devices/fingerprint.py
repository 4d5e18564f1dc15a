"""What a latency profile was measured on: CPU model, threads, the cgroup CPU quota it ran under, GPU (name,
capability, memory, CUDA and cuDNN), torch version."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import torch

from devices.cpuquota import current_quota


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_fingerprint(index: int = 0) -> dict:
    """What a GPU is: name, compute capability, memory, multiprocessors, CUDA and cuDNN versions."""
    props = torch.cuda.get_device_properties(index)
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16": torch.cuda.is_bf16_supported(),
    }


def fingerprint(torch_device: str = "cpu") -> dict:
    """This machine; with a CUDA `torch_device` (cuda, cuda:N) that GPU's too."""
    from devices.torch_device import cuda_index
    gpu = cuda_index(torch_device)
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cgroup_quota": current_quota(),  # the cgroup CPU quota this process ran under (None: none)
        "gpu": torch.cuda.get_device_name(gpu) if gpu is not None else None,
        "gpu_detail": gpu_fingerprint(gpu) if gpu is not None else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }
