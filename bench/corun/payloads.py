"""What the load generator's clients send: real test images, through the edge's head when the scheme splits.

    payload = make_payload(app, Scheme.parse("4,12,3"), images=32)

The first `images` images of the app's test split, one per request: a split scheme's body is the
edge head's output (`compress.model.SchemeModel` over the pruned base weights, as `runtime.edge`
without `--finetuned`), quantised and packed at the scheme's bits (`compress.activation`); all-cloud
sends the image itself at 8 bits. All-edge sends nothing and is refused.
"""

from __future__ import annotations

from apps import App
from bench.corun.load import Payload
from cli.errors import CoInferError
from compress.scheme import Scheme


def check_sendable(app: App, scheme: Scheme) -> None:
    """One CoInferError line unless clients can send `scheme` to `app`'s server: all-cloud, or a split scheme in
    the app's space (all-edge sends nothing)."""
    from compress.prune import check_in_space
    from models.build import app_points
    if scheme.is_all_edge:
        raise CoInferError("all-edge sends nothing to the cloud: give a split scheme or all-cloud")
    if scheme.is_split:
        check_in_space([pt.channels for pt in app_points(app)], *scheme)


def make_payload(app: App, scheme: Scheme, images: int = 32, base=None) -> Payload:
    """The request bodies of `images` test images of `app` under `scheme` (see the module doc)."""
    import torch

    from compress import activation
    from compress.model import SchemeModel
    from data import load_splits
    from models.build import load_base_model
    check_sendable(app, scheme)
    base = base if base is not None else load_base_model(app)
    _, test = load_splits(app)
    n = min(images, len(test))
    x = torch.stack([test[i][0] for i in range(n)])
    with torch.inference_mode():
        a = x if scheme.is_all_cloud else SchemeModel(base, scheme).eval().head(x)
    p, c, bits = scheme.wire(a.shape[1])
    bodies = tuple(activation.to_bytes(a[i:i + 1].contiguous(), bits) for i in range(n))
    return Payload(p, c, bits, (1, *a.shape[1:]), bodies)
