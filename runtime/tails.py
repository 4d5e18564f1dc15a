"""The cloud's tails, one per scheme, built on first use and kept in an LRU bounded in count and bytes.

    tails = TailCache(base, TailPolicy(finetuned=True), app=app)
    tail = tails.get(scheme)            # activation -> logits; may raise ProtocolError

What a split scheme's tail carries (`TailPolicy`):

- `finetuned=False`: the pruned base weights (keyed by (p, c) at 8 bits: b only affects the edge).
- `finetuned=True` (the CLI default): the scheme's fine-tuned weights when `runtime.weights` has
  them on disk (`train=False`: never computed on demand). When they are missing the tail is the
  pruned base, and the cache says so: a WARNING log line per build and the counter
  `tails_base_fallback` in `stats` (the server adds it to its own). Such a tail is rebuilt once the
  file appears (checked at most every `RECHECK_S`). With `strict`, a missing file is instead an
  ERROR UNKNOWN_SCHEME to the client.
- `finetune_on_request=True` (only with a token, checked by the server's config): a missing file is
  fine-tuned, one at a time, in a child process (`runtime.weights.finetune_apart`: its data, optimiser
  and the modules it loads go with it, so the server's memory stays what it was), then loaded; at most
  `finetune_queue` fine-tunes wait or run, a request beyond that gets ERROR BUSY at once (the
  connection stays open).

The cache keeps at most `size` tails and at most `max_bytes` bytes of their tensors (least recently
used dropped first; a single tail larger than the budget is served but not kept). The state_dicts
loaded here bypass `runtime.weights`' process-wide cache, so this budget is the whole of it.
Thread-safe: `get` runs in worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from apps import App
from cli.errors import CoInferError
from compress.model import SchemeModel
from compress.prune import check_scheme
from compress.scheme import Scheme
from models.splittable import Splittable
from runtime.memory import trim
from runtime.protocol import ErrorCode, ProtocolError

log = logging.getLogger("coinfer.cloud")
RECHECK_S = 5.0  # a base-weights fallback looks for its fine-tuned file again after this long


@dataclass(frozen=True)
class TailPolicy:
    """Which weights a tail carries and how much the cache may hold (see the module doc)."""

    finetuned: bool = False
    finetune_on_request: bool = False
    strict: bool = False
    size: int = 16
    max_bytes: int = 256 << 20
    finetune_queue: int = 2
    weights_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("size", "max_bytes", "finetune_queue"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise CoInferError(f"{name} must be an integer of at least 1, got {value!r}")
        if (self.finetune_on_request or self.strict) and not self.finetuned:
            raise CoInferError("finetune_on_request and strict need finetuned tails")


@dataclass
class _Entry:
    model: nn.Module
    nbytes: int
    fallback: bool  # pruned base weights standing in for missing fine-tuned ones
    built: float


def model_bytes(model: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each storage once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class TailCache:
    """Tails per scheme (see the module doc). `stats` counts builds, fallbacks and fine-tunes."""

    def __init__(self, base: Splittable, policy: TailPolicy = TailPolicy(), *, app: App | None = None) -> None:
        if policy.finetuned and app is None:
            raise ValueError("finetuned tails need the app")
        self.base, self.policy, self.app = base, policy, app
        self.stats: Counter[str] = Counter()
        self._tails: OrderedDict[Scheme, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._train_lock = threading.Lock()
        self._queued = 0  # fine-tunes waiting or running

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._tails.values())

    def __len__(self) -> int:
        return len(self._tails)

    def check(self, scheme: Scheme, shape: tuple[int, int, int, int]) -> None:
        """Raise ProtocolError (UNKNOWN_SCHEME / BAD_SHAPE) unless the base model has this scheme and shape."""
        if scheme.is_all_cloud:
            expected = (self.base.in_channels, self.base.input_size, self.base.input_size)
        else:
            try:
                check_scheme(self.base, *scheme)
            except CoInferError as exc:
                raise ProtocolError(ErrorCode.UNKNOWN_SCHEME, str(exc)) from None
            point = self.base.partition_points()[scheme.p]
            expected = (scheme.c, point.height, point.width)
        if tuple(shape[1:]) != expected:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"shape {shape[1:]} for scheme {scheme} should be {expected}")

    def cached(self, scheme: Scheme) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The tail when it is ready to use now (all-cloud, or kept and not due for a recheck), else None:
        then `get` builds or reloads it (call that off the event loop)."""
        if scheme.is_all_cloud:
            return self.base.forward
        key = scheme if self.policy.finetuned else Scheme(scheme.p, scheme.c, 8)
        with self._lock:
            entry = self._tails.get(key)
            if entry is None or (entry.fallback and time.monotonic() - entry.built > RECHECK_S):
                return None
            self._tails.move_to_end(key)
            return entry.model.tail

    def get(self, scheme: Scheme) -> Callable[[torch.Tensor], torch.Tensor]:
        """The tail of a scheme: activation -> logits (all-cloud: the whole base model)."""
        if scheme.is_all_cloud:
            return self.base.forward
        key = scheme if self.policy.finetuned else Scheme(scheme.p, scheme.c, 8)
        with self._lock:
            entry = self._tails.get(key)
            if entry is not None:
                self._tails.move_to_end(key)
        if entry is not None and entry.fallback and time.monotonic() - entry.built > RECHECK_S:
            entry.built = time.monotonic()  # one recheck per interval, whoever asks
            if self._have_weights(key):
                entry = None
        if entry is None:
            entry = self._build_once(key)
        return entry.model.tail

    # ---------------------------------------------------------------------------------- building
    def _have_weights(self, scheme: Scheme) -> bool:
        from runtime.weights import has_weights
        assert self.app is not None
        return has_weights(self.app, scheme, self.policy.weights_root)

    def _build_once(self, key: Scheme) -> _Entry:
        if self.policy.finetuned and not self._have_weights(key) and self.policy.finetune_on_request:
            return self._finetune(key)
        with self._build_lock:  # loading takes a moment: build outside the LRU lock, once
            with self._lock:
                entry = self._tails.get(key)
            if entry is None or (entry.fallback and self._have_weights(key)):
                entry = self._build(key)
                self._keep(key, entry)
        return entry

    def _finetune(self, key: Scheme) -> _Entry:
        with self._lock:
            if self._queued >= self.policy.finetune_queue:
                self.stats["finetune_busy"] += 1
                raise ProtocolError(ErrorCode.BUSY, f"{self._queued} fine-tunes queued; scheme {key} later")
            self._queued += 1
        try:
            with self._train_lock:  # one fine-tune at a time
                with self._lock:
                    entry = self._tails.get(key)
                if entry is None or entry.fallback:
                    entry = self._build(key, train=True)
                    self._keep(key, entry)
            return entry
        finally:
            with self._lock:
                self._queued -= 1
            trim()  # the weights file was read and copied into the tail: give the freed pages back to the OS

    def _build(self, scheme: Scheme, train: bool = False) -> _Entry:
        if not self.policy.finetuned:
            model = SchemeModel(self.base, scheme).eval()
            self.stats["tails_base"] += 1
            return _Entry(model, model_bytes(model), False, time.monotonic())
        import runtime.weights
        from runtime.weights import scheme_model, scheme_path
        assert self.app is not None
        if train or self._have_weights(scheme):
            if train and not self._have_weights(scheme):
                self.stats["finetunes"] += 1
                log.info("fine-tuning scheme %s on request, in a child process", scheme)
                runtime.weights.finetune_apart(self.app, scheme, self.policy.weights_root, torch.get_num_threads())
            model = scheme_model(self.app, scheme, base=self.base, root=self.policy.weights_root, train=False,
                                 keep=False)
            self.stats["tails_finetuned"] += 1
            return _Entry(model, model_bytes(model), False, time.monotonic())
        path = scheme_path(self.app, scheme, self.policy.weights_root)
        if self.policy.strict:
            self.stats["error_no_weights"] += 1
            raise ProtocolError(ErrorCode.UNKNOWN_SCHEME, f"no fine-tuned weights for scheme {scheme} on this server")
        self.stats["tails_base_fallback"] += 1
        log.warning("scheme %s: no fine-tuned weights at %s; serving the pruned base weights "
                    "(less accurate than the database says)", scheme, path)
        model = SchemeModel(self.base, scheme).eval()
        return _Entry(model, model_bytes(model), True, time.monotonic())

    def _keep(self, key: Scheme, entry: _Entry) -> None:
        with self._lock:
            self._tails[key] = entry
            self._tails.move_to_end(key)
            total = sum(e.nbytes for e in self._tails.values())
            while len(self._tails) > 1 and (len(self._tails) > self.policy.size or total > self.policy.max_bytes):
                _, dropped = self._tails.popitem(last=False)
                total -= dropped.nbytes
            if total > self.policy.max_bytes:  # this one alone is over the budget: serve it, keep nothing
                self._tails.clear()
