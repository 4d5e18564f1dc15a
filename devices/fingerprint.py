"""What a latency profile was measured on: CPU model, its instruction-set flags and cores, threads, the cgroup CPU
quota it ran under, GPU (name, driver, capability, memory, CUDA and cuDNN), torch version.

`this_machine()` is the part a stored profile is compared with (`same_machine`: CPU model and logical CPUs), and
`describe_machine` names a fingerprint in one phrase ("AMD EPYC, 2 CPUs").
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import torch

from devices.cpuquota import current_quota

# the instruction-set flags torch's CPU kernels choose between (x86 and Arm); the rest of /proc/cpuinfo's flags do
# not change a latency
ISA_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                       "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve",
                       "sve2", "bf16", "i8mm"})


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """This CPU's instruction-set flags among `ISA_FLAGS`, sorted."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return sorted(set(line.split(":", 1)[1].split()) & ISA_FLAGS)
    return []


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo (None where it does not say)."""
    cores, package = set(), "0"
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def gpu_driver() -> str | None:
    """The NVIDIA kernel driver's version (None without one)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = text.split()
    return next((w for w in words if w[:1].isdigit() and "." in w), None)


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
        "driver": gpu_driver(),
    }


def fingerprint(torch_device: str = "cpu") -> dict:
    """This machine; with a CUDA `torch_device` (cuda, cuda:N) that GPU's too."""
    from devices.torch_device import cuda_index
    gpu = cuda_index(torch_device)
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cgroup_quota": current_quota(),  # the cgroup CPU quota this process ran under (None: none)
        "gpu": torch.cuda.get_device_name(gpu) if gpu is not None else None,
        "gpu_detail": gpu_fingerprint(gpu) if gpu is not None else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def this_machine() -> dict:
    """What a stored profile's machine is compared with: this CPU's model and logical CPUs."""
    return {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count()}


def same_machine(profiled: dict, here: dict) -> bool:
    """Whether a profile's fingerprint names the machine `here` (`this_machine()`): same CPU model and CPUs."""
    return profiled.get("cpu_model") == here.get("cpu_model") and profiled.get("logical_cpus") == here.get(
        "logical_cpus")


def describe_machine(fp: dict) -> str:
    """A fingerprint in one phrase: "AMD EPYC, 2 CPUs" (with its GPU), or an imported profile's hardware."""
    if fp.get("cpu_model") is None:
        return str(fp.get("hardware") or fp.get("formula") or "an unknown machine")
    text = f"{fp['cpu_model']}, {fp.get('logical_cpus', '?')} CPUs"
    return text + (f", GPU {fp['gpu']}" if fp.get("gpu") else "")
