"""The in-process baseline: how fast the server's own compute runs with no network, no queue, no client.

    images_per_s = inprocess_throughput(app, scheme, payload, batch=1, seconds=3)

It times `runtime.batching.compute` (decode, dequantise, tail forward, top-k: exactly what a
server's worker runs) over the same request bodies the clients send, `batch` requests per call, in
this process's thread with its torch threads (the server's default: 1). One warm-up call first;
then calls back to back for `seconds`: images over elapsed seconds.
"""

from __future__ import annotations

import time

from apps import App
from bench.corun.load import Payload
from compress.scheme import Scheme


def inprocess_throughput(app: App, scheme: Scheme, payload: Payload, batch: int = 1, seconds: float = 3.0,
                         base=None) -> float:
    """Images per second of the server's compute at `batch` requests per call (see the module doc)."""
    from models.build import load_base_model
    from runtime.batching import compute
    from runtime.protocol import Request
    from runtime.tails import TailCache, TailPolicy
    base = base if base is not None else load_base_model(app)
    tail = TailCache(base, TailPolicy(), app=app).get(scheme)
    bodies = payload.bodies
    requests = [Request(i + 1, app.name, payload.p, payload.c, payload.bits, 1, payload.shape, bodies[i % len(bodies)])
                for i in range(max(batch, len(bodies)))]
    compute(app.name, requests[:batch], tail)
    images, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = [requests[(i + j) % len(requests)] for j in range(batch)]
        compute(app.name, chunk, tail)
        images += batch
        i += batch
    return images / (time.perf_counter() - t0)
