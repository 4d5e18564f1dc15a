"""Training and testing loops (plain PyTorch), and the base-model training CLI.

    python -m models.train --app vgg16_digits    # writes checkpoints/vgg16_digits.pt (installed: in DATA_ROOT)

An app with `model.weights` starts from those pretrained weights (models/pretrained.py) and fine-tunes.

The checkpoint is a plain state_dict (tensors only) so it loads with weights_only=True.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from apps import DEFAULT_APP, App, Protocol, load_app
from cli.args import ArgParser
from cli.files import check_output, write_atomic
from cli.paths import own
from cli.run import run_cli
from models.accel import Accel

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset


def base_protocol(app: App) -> Protocol:
    """How the base model is trained: the app's `train` section (epochs, lr, batch size, seed) with SGD's
    defaults (momentum 0.9, weight decay 5e-4, lr decaying linearly to 0)."""
    cfg = app.train
    return Protocol(epochs=int(cfg.get("epochs", 30)), lr=float(cfg.get("lr", 0.05)),
                    batch_size=int(cfg.get("batch_size", 64)), seed=int(cfg.get("seed", 0)))


def train_epochs(model: nn.Module, data: Dataset, protocol: Protocol, *, progress: bool = False,
                 accel: Accel | None = None) -> None:
    """SGD over `data` as `protocol` says (epochs, lr, batch size, momentum, weight decay, seed); lr
    decays linearly to 0 (schedule "linear") or stays constant. `accel`: how to use a GPU
    (models/accel.py: AMP, channels_last, data on the device, compile); None: plain fp32. The batches
    are the same for any `accel` (one generator seeded with `protocol.seed` shuffles)."""
    import torch
    from torch import nn

    from cli.progress import progress as progress_bar
    accel = accel or Accel()
    epochs = protocol.epochs
    generator = torch.Generator().manual_seed(protocol.seed)
    loader = _loader(data, protocol.batch_size, generator, accel)
    steps = max(1, epochs * len(loader))
    opt = torch.optim.SGD(model.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                          weight_decay=protocol.weight_decay)
    decay = (lambda s: 1 - s / steps) if protocol.schedule == "linear" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    device = next(model.parameters()).device
    memory = torch.channels_last if accel.channels_last else torch.contiguous_format
    if accel.channels_last:
        model.to(memory_format=memory)
    forward = torch.compile(model) if accel.compiles(steps) else model
    dtype = accel.dtype()
    scaler = torch.amp.GradScaler("cuda") if accel.amp == "fp16" else None
    bar = progress_bar(total=steps, desc="train", unit="step", enabled=progress, leave=False)
    for _ in range(epochs):
        for x, y in loader:
            x = x.to(device, non_blocking=True, memory_format=memory)
            y = y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(forward(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    model.eval()


def _loader(data: Dataset, batch_size: int, generator, accel: Accel):
    """Shuffled batches: a tensor dataset already on the device (accel.data_on_device), or a
    DataLoader with worker processes and pinned memory."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    if accel.data_on_device and isinstance(data, TensorDataset):
        return _DeviceBatches(data, batch_size, generator, torch.device(accel.device))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator,
                      num_workers=accel.loader_workers, pin_memory=accel.pin_memory,
                      persistent_workers=accel.loader_workers > 0)


class _DeviceBatches:
    """A TensorDataset copied to the device once and batched there, shuffled by the seeded generator."""

    def __init__(self, data, batch_size: int, generator, device) -> None:
        self.tensors = [t.to(device) for t in data.tensors]
        self.n, self.batch_size, self.generator = len(data), batch_size, generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        import torch
        order = torch.randperm(self.n, generator=self.generator).to(self.tensors[0].device)
        for i in range(0, self.n, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


def test_accuracy(model: nn.Module, data: Dataset, batch_size: int = 256) -> tuple[float, float]:
    """(top-1, top-5) accuracy as fractions (no gradients)."""
    import torch
    from torch.utils.data import DataLoader
    model.eval()
    device = next(model.parameters()).device
    top1 = top5 = total = 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            k = min(5, logits.shape[1])
            best = logits.topk(k, dim=1).indices
            top1 += (best[:, 0] == y).sum().item()
            top5 += (best == y[:, None]).any(1).sum().item()
            total += len(y)
    return top1 / total, top5 / total


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(description="Train an app's base model and write its checkpoint.")
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--out", default=None, help="checkpoint path (default: the app's; installed, in the data folder)")
    ap.add_argument("--json", action="store_true", help="print one JSON object: top-1, top-5, test images, time, file")
    args = ap.parse_args(argv)
    import torch

    from data import load_splits
    from models.build import pretrained_model
    app = load_app(args.app)
    from models.pretrained import weights_path
    inputs = (app.source, weights_path(app) if app.weights else None)  # the weights it starts from
    if args.out is None:  # the app's checkpoint; an installed copy's first one goes to a new folder of its data folder
        own(app.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    out = check_output(args.out or own(app.checkpoint), "checkpoint", inputs)  # before the training
    protocol = base_protocol(app)
    torch.manual_seed(protocol.seed)
    model, pretrained = pretrained_model(app)  # model.weights, when the app names them: fine-tune from them
    train, test = load_splits(app)  # after the weights: a missing file is said before a large dataset is read
    if pretrained:
        print(f"{app.name}: {pretrained}")
    start = time.perf_counter()
    train_epochs(model, train, protocol, progress=True)
    top1, top5 = test_accuracy(model, test)
    write_atomic(out, lambda f: torch.save(model.state_dict(), f), "checkpoint")
    wall = time.perf_counter() - start
    print(json.dumps({"app": app.name, "top1": top1, "top5": top5, "test_images": len(test), "train_s": wall,
                      "checkpoint": str(out)}) if args.json else
          f"{app.name}: base top-1 {top1:.4f} top-5 {top5:.4f} on {len(test)} test images, "
          f"trained in {wall:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
