"""What a latency profile was measured on: CPU model, threads, CPU quota, GPU, torch version."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import torch

from database.cpuquota import current_quota


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fingerprint(use_cuda: bool = False) -> dict:
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_quota": current_quota(),
        "gpu": torch.cuda.get_device_name(0) if use_cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }
