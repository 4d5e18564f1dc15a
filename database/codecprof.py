"""The sizes a data-dependent codec sends, measured on an app's own activations at the cut.

    python -m database.codecprof --app vgg16_digits --codec zstd [--images 200] [--storage DB]

The app's base model (`models.build.load_base_model`) runs on its first `--images` test images
(`data.load_splits`); at every partition point p the activation is quantised at every b
(`compress.quant`, per image and channel, so keeping c channels quantises them as they are) and, at
the kept-channel counts of `channel_grid` (the c that pruning keeps: the producer filters of largest
L1 norm, `compress.prune.keep_filters`), each image's body is encoded by the codec, one frame per
image as the runtime sends them. A `codec.sizes.SizeRow` per (p, c, b) keeps the mean and 95th
percentile of the body's bytes and bitpack's (exact) size; `Store.put_codec_sizes` stores them with
the app's latency profile and `search.latency` reads them (`--codec`).

The activations are the base model's, not each scheme's fine-tuned one: fine-tuning one epoch moves
them little, and what is profiled is how compressible the symbols are (a ratio to bitpack's size,
interpolated in c by `codec.sizes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from codec import BITPACK, Codec
from codec.sizes import SizeRow
from compress.scheme import BITS

if TYPE_CHECKING:
    import torch

    from apps import App


def cut_activations(app: App, images: int) -> list[torch.Tensor]:
    """The base model's activation (N, C_p, H, W) at every partition point for the first `images` test images."""
    import torch

    from data import load_splits
    from models.build import load_base_model
    model = load_base_model(app)
    test = load_splits(app)[1]
    n = min(images, len(test))
    x = torch.stack([test[i][0] for i in range(n)])
    with torch.inference_mode():
        return [model.forward_head(x, pt.index) for pt in model.partition_points()]


def kept_order(app: App) -> list[list[int]]:
    """Per point, its channels from the largest producer-filter L1 norm down: the first c are what
    pruning to c keeps (`compress.prune.keep_filters`, ties to the lower index)."""
    from models.build import load_base_model
    model = load_base_model(app)
    out = []
    for pt in model.partition_points():
        norms = model.producer_weight(pt.index).detach().abs().flatten(1).sum(1)
        out.append(sorted(range(len(norms)), key=lambda i: (-float(norms[i]), i)))
    return out


def channel_grid(channels: int) -> list[int]:
    """The kept-channel counts profiled at a point of `channels` channels: 1, 2, 4, ... and C_p."""
    grid, c = [], 1
    while c < channels:
        grid.append(c)
        c *= 2
    return grid + [channels]


def profile_sizes(app: App, codec: Codec, images: int = 200) -> list[SizeRow]:
    """One SizeRow per (p, c in channel_grid(C_p), b) of `codec` on the app's test images."""
    from compress.quant import quantize
    rows = []
    for p, (a, order) in enumerate(zip(cut_activations(app, images), kept_order(app))):
        for bits in BITS:
            codes, lo, scale = (t.numpy() for t in quantize(a, bits))
            for c in channel_grid(a.shape[1]):
                keep = sorted(order[:c])
                sizes = np.array([len(codec.encode((codes[i:i + 1, keep], lo[i:i + 1, keep], scale[i:i + 1, keep]),
                                                   bits)) for i in range(len(codes))])
                rows.append(SizeRow(p, c, bits, float(sizes.mean()), float(np.percentile(sizes, 95)),
                                    BITPACK.body_bound((1, c, a.shape[2], a.shape[3]), bits), len(sizes)))
    return rows
