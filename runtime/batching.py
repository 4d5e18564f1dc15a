"""The cloud's queue per app: requests wait here for a compute worker, optionally merged into batches.

    queue = AppQueue("vgg16_digits", BatchPolicy(max_images=16, max_wait_s=0.002), workers=1)
    reply, waited = await queue.submit(request, tail)     # Reply; ProtocolError for this request only

Every hosted app has its own `AppQueue` (`runtime.cloud`), so a burst on one app does not stand in
front of another's requests; each queue has `workers` consumers, each computing one batch at a time
in a thread (`asyncio.to_thread`: torch releases the GIL while it computes).

Dynamic batching (`BatchPolicy`, off by default: `max_images` 1): a consumer takes the oldest
request, then for at most `max_wait_s` more seconds takes further requests of the SAME scheme (one
tail) until the batch holds `max_images` images; requests of another scheme wait for the next
batch, in order. The batch is decoded request by request, each by its own codec
(`runtime.protocol.decode_request`; a malformed body or an unknown codec fails only its own
request), concatenated, run through the tail once, and split into one Reply per request: `unpack_s` is
the request's own decode, `compute_s` the batch's forward (shared).

`compute` is also what the in-process baseline of `bench.corun` times, so server and baseline run
the same code.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cli.errors import CoInferError
from runtime.protocol import ProtocolError, Reply, Request, decode_request

if TYPE_CHECKING:
    import torch

Tail = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class BatchPolicy:
    """`max_images` per batch (1: no batching, the default) and `max_wait_s` a batch may wait to fill."""

    max_images: int = 1
    max_wait_s: float = 0.002

    def __post_init__(self) -> None:
        if not (isinstance(self.max_images, int) and not isinstance(self.max_images, bool) and self.max_images >= 1):
            raise CoInferError(f"batch max_images must be an integer of at least 1, got {self.max_images!r}")
        if not (isinstance(self.max_wait_s, (int, float)) and math.isfinite(self.max_wait_s)
                and 0 <= self.max_wait_s <= 1):
            raise CoInferError(f"batch max_wait_s must be in 0..1 seconds, got {self.max_wait_s!r}")

    @property
    def enabled(self) -> bool:
        return self.max_images > 1


def compute(app: str, requests: list[Request], tail: Tail) -> list[Reply | ProtocolError]:
    """Decode, dequantise, one tail forward for all, top-k; one answer per request, in order.

    All requests must share one scheme (hence one tail); a body that does not decode is that request's
    ProtocolError, the others still run."""
    import torch  # loaded by the server's constructor already: a dictionary look-up

    answers: list[Reply | ProtocolError | None] = [None] * len(requests)
    inputs, unpack = [], []
    for i, req in enumerate(requests):
        t0 = time.perf_counter()
        try:
            x = decode_request(req)  # the request's codec decodes, then dequantise
        except ProtocolError as exc:
            answers[i] = exc
            continue
        inputs.append((i, x))
        unpack.append(time.perf_counter() - t0)
    if inputs:
        t1 = time.perf_counter()
        a = inputs[0][1] if len(inputs) == 1 else torch.cat([x for _, x in inputs])
        with torch.inference_mode():
            probs = torch.softmax(tail(a).float(), dim=1)
            scores, classes = probs.topk(min(max(r.k for r in requests), probs.shape[1]), dim=1)
        compute_s = time.perf_counter() - t1
        classes_l, scores_l = classes.tolist(), scores.tolist()
        row = 0
        for (i, x), unpack_s in zip(inputs, unpack):
            req, n = requests[i], x.shape[0]
            k = min(req.k, probs.shape[1])
            answers[i] = Reply(req.request_id, app, req.p, req.c, req.bits,
                               tuple(tuple(r[:k]) for r in classes_l[row:row + n]),
                               tuple(tuple(r[:k]) for r in scores_l[row:row + n]), unpack_s, compute_s)
            row += n
    return answers  # type: ignore[return-value]  # every slot is filled


@dataclass
class _Item:
    request: Request
    tail: Tail
    future: asyncio.Future
    queued: float  # perf_counter when it joined the queue


class AppQueue:
    """One app's requests waiting for compute (see the module doc). Consumers start on first use and
    stop with `close()`. `stats`: batches and images computed."""

    def __init__(self, app: str, policy: BatchPolicy = BatchPolicy(), workers: int = 1) -> None:
        self.app, self.policy, self.workers = app, policy, workers
        self.batches = self.images = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._carry: collections.deque[_Item] = collections.deque()
        self._consumers: list[asyncio.Task] = []

    def __len__(self) -> int:
        return self._queue.qsize() + len(self._carry)

    async def submit(self, request: Request, tail: Tail) -> tuple[Reply, float]:
        """(the Reply, seconds it waited for a worker); raises the request's ProtocolError."""
        if not self._consumers:
            self._consumers = [asyncio.create_task(self._consume()) for _ in range(self.workers)]
        future = asyncio.get_running_loop().create_future()
        item = _Item(request, tail, future, time.perf_counter())
        self._queue.put_nowait(item)
        answer, waited = await future
        if isinstance(answer, ProtocolError):
            raise answer
        return answer, waited

    async def close(self) -> None:
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self._consumers = []

    async def _next(self) -> _Item:
        return self._carry.popleft() if self._carry else await self._queue.get()

    async def _collect(self, first: _Item) -> list[_Item]:
        """`first` plus what may join it within the policy (same scheme, images and wait bounded)."""
        batch, images = [first], first.request.shape[0]
        if not self.policy.enabled:
            return batch
        scheme = first.request.scheme
        deadline = time.perf_counter() + self.policy.max_wait_s
        skipped: list[_Item] = []
        # requests of the same scheme already carried over from an earlier batch join first, in order
        for item in list(self._carry):
            if images >= self.policy.max_images:
                break
            if item.request.scheme == scheme and images + item.request.shape[0] <= self.policy.max_images:
                self._carry.remove(item)
                batch.append(item)
                images += item.request.shape[0]
        while images < self.policy.max_images:
            left = deadline - time.perf_counter()
            try:
                item = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if item.request.scheme == scheme and images + item.request.shape[0] <= self.policy.max_images:
                batch.append(item)
                images += item.request.shape[0]
            else:
                skipped.append(item)
        self._carry.extend(skipped)
        return batch

    async def _consume(self) -> None:
        while True:
            first = await self._next()
            batch = await self._collect(first)
            live = [item for item in batch if not item.future.done()]  # a cancelled waiter (client gone)
            if not live:
                continue
            start = time.perf_counter()
            try:
                answers = await asyncio.to_thread(compute, self.app, [i.request for i in live], live[0].tail)
            except Exception as exc:  # a bug or a broken tail: every request of the batch gets it
                answers = [exc] * len(live)
            self.batches += 1
            self.images += sum(i.request.shape[0] for i in live)
            for item, answer in zip(live, answers):
                if not item.future.done():
                    if isinstance(answer, Exception) and not isinstance(answer, ProtocolError):
                        item.future.set_exception(answer)
                    else:
                        item.future.set_result((answer, start - item.queued))

