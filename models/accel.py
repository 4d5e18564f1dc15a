"""How a fine-tune uses its device: `Accel`, built once from the command line.

On the CPU nothing changes (fp32, the plain loop of models/train.py: the accuracy database's
numbers stay what they were). On a CUDA device `Accel.for_device("cuda")` turns on what PyTorch
offers for speed:

- AMP: autocast in bfloat16 where the GPU supports it (no loss scaling needed), else float16
  with a `torch.amp.GradScaler`;
- channels_last memory format for the model and each batch (convolutions on tensor cores);
- `torch.backends.cudnn.benchmark` (the fastest convolution algorithm per shape);
- data: an in-memory tensor dataset (the digits) is moved to the GPU once and batched there,
  so the loader is never the bottleneck; any other dataset is read by a DataLoader with
  `loader_workers` worker processes, pinned memory and non-blocking copies;
- `torch.compile` when it pays: `compile="auto"` compiles when a fine-tune runs at least
  `COMPILE_MIN_STEPS` optimiser steps (the reference app: 25 epochs of Stanford Cars), not for
  the default app's one-epoch, 12-step fine-tunes, which a compile would take longer than.

Results on a GPU are not bit-identical to the CPU's (reduced precision): rows carry their host, and
a table built on GPUs should be built on GPUs throughout (one protocol, one kind of device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cli.errors import CoInferError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MIN_STEPS = 2000


@dataclass(frozen=True)
class Accel:
    device: str = "cpu"
    amp: str = "off"  # "bf16", "fp16" (with a grad scaler) or "off"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    loader_workers: int = 0
    pin_memory: bool = False
    data_on_device: bool = False  # a tensor dataset is copied to the device once
    compile: str = "off"  # "auto" (when the fine-tune has >= COMPILE_MIN_STEPS steps), "on", "off"

    def __post_init__(self) -> None:
        if self.amp not in ("bf16", "fp16", "off"):
            raise CoInferError(f"amp {self.amp!r}: expected one of bf16, fp16, off")
        if self.compile not in COMPILE_CHOICES:
            raise CoInferError(f"compile {self.compile!r}: expected one of {', '.join(COMPILE_CHOICES)}")
        if self.loader_workers < 0:
            raise CoInferError("loader workers must be >= 0")
        if not self.is_cuda and (self.amp != "off" or self.channels_last or self.pin_memory or self.data_on_device):
            raise CoInferError(f"AMP, channels_last, pinned memory and data on the device need a CUDA device, "
                               f"not {self.device}")

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @classmethod
    def for_device(cls, device: str = "cpu", amp: str = "auto", compile: str = "auto",
                   loader_workers: int | None = None, bf16_supported: bool | None = None) -> Accel:
        """The fast settings for `device` ("cpu", "cuda", "cuda:1"); `bf16_supported` None asks torch."""
        if amp not in AMP_CHOICES:
            raise CoInferError(f"--amp {amp!r}: expected one of {', '.join(AMP_CHOICES)}")
        if not device.startswith("cuda"):
            if amp not in ("auto", "off"):
                raise CoInferError(f"--amp {amp} needs --torch-device cuda")
            return cls(device=device, compile="off" if compile == "auto" else compile)
        if bf16_supported is None:
            import torch
            bf16_supported = torch.cuda.is_bf16_supported()
        if amp == "auto":
            amp = "bf16" if bf16_supported else "fp16"
        workers = min(8, os.cpu_count() or 1) if loader_workers is None else loader_workers
        return cls(device=device, amp=amp, channels_last=True, cudnn_benchmark=True, loader_workers=workers,
                   pin_memory=True, data_on_device=True, compile=compile)

    def compiles(self, steps: int) -> bool:
        return self.compile == "on" or (self.compile == "auto" and self.is_cuda and steps >= COMPILE_MIN_STEPS)

    def dtype(self):
        import torch
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def to_json(self) -> dict:
        return dict(self.__dict__)
