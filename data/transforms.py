"""An app's image transforms: PIL image -> float tensor (in_channels, input_size, input_size), normalised.

    test:  channels -> Resize(resize) -> CenterCrop(input_size) -> ToTensor -> Normalize(mean, std)
    train: the same, or with `dataset.augment` a RandomCrop(input_size, padding input_size/8) and a
           RandomHorizontalFlip in place of the centre crop (for natural images, not digits)

`in_channels` (1 or 3) converts every image: to grey with PIL's ITU-R 601-2 luma for 1, to RGB for 3
(a grey image's value repeated). `dataset.resize` (the shorter side) defaults to the dataset's own rule
(`input_size` for the 32x32 sets, 256/224 of it for image folders); `dataset.mean` and `dataset.std`
default to the dataset's statistics. Statistics of 3 values for a 1-channel app are averaged, 1 value
for a 3-channel app repeated.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torchvision import transforms

from apps import App
from cli.errors import CoInferError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToChannels:
    """A PIL image in mode L (1 channel) or RGB (3); a plain class, so DataLoader workers can pickle it."""

    def __init__(self, channels: int) -> None:
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToChannels({self.mode})"


def fit_stats(values: Sequence[float], channels: int, key: str, app: App) -> tuple[float, ...]:
    """`values` per channel: as given for `channels` values, averaged 3 -> 1, repeated 1 -> 3."""
    if len(values) == channels:
        return tuple(float(v) for v in values)
    if len(values) == 3 and channels == 1:
        return (sum(values) / 3,)
    if len(values) == 1:
        return (float(values[0]),) * channels
    raise CoInferError(f"app {app.name}: dataset.{key} has {len(values)} values, model.in_channels is {channels}")


def image_transforms(app: App, mean: Sequence[float], std: Sequence[float],
                     resize: int | None = None) -> tuple[transforms.Compose, transforms.Compose]:
    """(train, test) transforms for `app`; `mean`, `std`, `resize`: the dataset's defaults (resize None:
    the input size)."""
    channels, size, cfg = app.in_channels, app.input_size, app.dataset
    if channels not in (1, 3):
        raise CoInferError(f"app {app.name}: {cfg['name']} images have 1 or 3 channels, "
                           f"model.in_channels is {channels}")
    side = int(cfg.get("resize") or resize or size)
    if side < size:
        raise CoInferError(f"app {app.name}: dataset.resize {side} is smaller than model.input_size {size}")
    head = [ToChannels(channels), transforms.Resize(side)]
    tail = [transforms.ToTensor(), transforms.Normalize(fit_stats(cfg.get("mean") or mean, channels, "mean", app),
                                                        fit_stats(cfg.get("std") or std, channels, "std", app))]
    test = transforms.Compose([*head, transforms.CenterCrop(size), *tail])
    if not cfg.get("augment"):
        return test, test
    crop = [transforms.RandomCrop(size, padding=size // 8), transforms.RandomHorizontalFlip()]
    return transforms.Compose([*head, *crop, *tail]), test
