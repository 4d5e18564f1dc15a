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

import json
from typing import TYPE_CHECKING

import numpy as np

from apps import DEFAULT_APP, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from codec import BITPACK, Codec, get, names
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


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m database.codecprof", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--codec", default="zstd", help="a data-dependent codec (default %(default)s)")
    ap.add_argument("--images", type=int, default=200, help="test images encoded (default %(default)s)")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.images < 1:
        raise CoInferError("--images must be at least 1")
    codec = get(args.codec)
    if codec.exact:
        raise CoInferError(f"codec {codec.name} has an exact size (no profile needed); data-dependent codecs: "
                           + ", ".join(n for n in names() if not get(n).exact))
    app = load_app(args.app)
    from database.storage import Storage
    from database.store import Store
    rows = profile_sizes(app, codec, args.images)
    Store(Storage.parse(args.storage)).put_codec_sizes(app.name, codec.name, rows)
    mean = sum(r.mean for r in rows) / sum(r.bitpacked for r in rows)
    if args.json:
        print(json.dumps({"app": app.name, "codec": codec.name, "images": rows[0].images,
                          "rows": [r.__dict__ for r in rows]}))
    else:
        print(f"{app.name}, {codec.name}: {len(rows)} sizes (p, c, b) over {rows[0].images} test images stored; "
              f"mean body {mean:.1%} of bitpack's")
        for bits in BITS:
            sel = [r for r in rows if r.bits == bits]
            print(f"  b={bits}: mean {sum(r.mean for r in sel) / sum(r.bitpacked for r in sel):.1%}, "
                  f"p95 {sum(r.p95 for r in sel) / sum(r.bitpacked for r in sel):.1%} of bitpack's bytes")
    return 0


if __name__ == "__main__":
    run_cli(main)
