"""The torch device a CLI computes on: one flag, `--torch-device cpu|cuda|cuda:N`, on every CLI.

Distinct from a profiled device (`--device NAME`, devices.spec.Device): this is where torch runs.
The searches keep the paper's `-gpu N` as an alias of `--torch-device cuda:N`. The syntax is checked
without torch (so `--help` stays fast); `check_torch_device(..., available=True)` also asks torch
whether that GPU exists.
"""

from __future__ import annotations

import re

from cli.errors import CoInferError

TORCH_DEVICE_PATTERN = r"cpu|cuda(:\d{1,3})?"
TORCH_DEVICE_HELP = "cpu, cuda or cuda:N"


def add_torch_device_argument(ap, help: str, default: str = "cpu") -> None:
    """Add `--torch-device` to an argparse parser (dest `torch_device`)."""
    ap.add_argument("--torch-device", default=default, metavar="DEVICE",
                    help=f"{help}: {TORCH_DEVICE_HELP} (default: %(default)s)")


def check_torch_device(name: str, available: bool = False, flag: str = "--torch-device") -> str:
    """`name` when it is cpu, cuda or cuda:N (and, with `available`, that device exists here); else one
    CoInferError line naming `flag`."""
    if not isinstance(name, str) or not re.fullmatch(TORCH_DEVICE_PATTERN, name):
        raise CoInferError(f"{flag} {name!r}: expected {TORCH_DEVICE_HELP}")
    if available and name != "cpu":
        import torch
        if not torch.cuda.is_available() or cuda_index(name) >= torch.cuda.device_count():
            raise CoInferError(f"{flag} {name}: no such CUDA device on this machine")
    return name


def torch_device_of(torch_device: str, gpu: int | None, available: bool = True) -> str:
    """The searches' torch device: `--torch-device`, or the paper's `-gpu N` (cuda:N). With `available`,
    checked to exist here now; without, only its syntax (the searches check a GPU when a fine-tune needs
    it: an answer from the database needs none)."""
    if gpu is None:
        return check_torch_device(torch_device, available=available)
    if torch_device != "cpu":
        raise CoInferError("-gpu N is --torch-device cuda:N: give one of them")
    if gpu < 0:
        raise CoInferError(f"-gpu {gpu}: no such CUDA device on this machine")
    try:
        return check_torch_device(f"cuda:{gpu}", available=available)
    except CoInferError:
        raise CoInferError(f"-gpu {gpu}: no such CUDA device on this machine") from None


def cuda_index(name: str) -> int | None:
    """The GPU index of a torch device name (cuda: 0), None for the CPU."""
    if name == "cpu":
        return None
    return int(name.split(":", 1)[1]) if ":" in name else 0
