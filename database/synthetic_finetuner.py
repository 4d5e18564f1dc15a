"""A deterministic stand-in for fine-tuning: accuracy from a formula, after an optional sleep.

    python -m database.evaluate --evaluator synthetic:0.05 --storage ... --schemes point:7

`SyntheticFinetuner` is a `database.finetuner.Finetuner` whose `finetune_row` returns, for a scheme
and seed, the same row on every host and every run (a hash of app, protocol, scheme and seed
seeds the noise), after sleeping `delay_s`. It exists to exercise what surrounds fine-tuning
without its cost: the distributed build's claims, heartbeats, retries and accuracy writes
(tests/test_distributed.py's kill -9 chaos, `bench.scale`), and a dry run of a cluster setup
before hours of GPU time. Its rows carry the protocol name with a `synthetic-` prefix, so they
never pass for measured accuracy. No torch: a worker starts in about a second.

The surface is monotone in c and b at each point (before noise), deeper points tolerate more
compression, as `search.synthetic_problems.synthetic_table`:

    top1 = base - 0.5 exp(-6 c / (C s_c)) - 0.4 exp(-7 b / (8 s_b)) + noise,  s_c = 1.2 - (p + 1) / 14
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
from dataclasses import dataclass

from apps import App
from cli.errors import CoInferError
from compress.scheme import Scheme
from database.store import AccuracyRow

PREFIX = "synthetic:"


def synthetic_protocol(app: App) -> str:
    """The protocol name synthetic rows are stored under (never the app's own)."""
    return f"synthetic-{app.protocol.name}"


@dataclass(frozen=True)
class SyntheticFinetuner:
    """Rows from a formula (see the module doc); `delay_s` of sleep per evaluation; `widths`: C_p."""

    app: App
    widths: tuple[int, ...]
    delay_s: float = 0.0
    base: float = 0.95
    noise: float = 0.003

    @property
    def protocol(self) -> str:
        return synthetic_protocol(self.app)

    def top1(self, scheme: Scheme, seed: int) -> float:
        p, c, b = scheme
        cp, n = self.widths[p], len(self.widths)
        s_c, s_b = 1.2 - (p + 1) / (n + 1), 1.0
        drop = 0.5 * math.exp(-6 * c / (cp * s_c)) + 0.4 * math.exp(-7 * b / (8 * s_b))
        key = f"{self.app.name}|{self.protocol}|{scheme}|{seed}".encode()
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2**64
        return min(1.0, max(0.0, self.base - drop + self.noise * (2 * u - 1)))

    def finetune(self, scheme: Scheme, seed: int | None = None):
        raise CoInferError("the synthetic evaluator has accuracies, not weights: fine-tune with --evaluator finetune")

    def finetune_row(self, scheme: Scheme, seed: int | None = None) -> AccuracyRow:
        seed = self.app.protocol.seed if seed is None else seed
        if self.delay_s:
            time.sleep(self.delay_s)
        return AccuracyRow(self.app.name, self.protocol, *scheme, seed, self.top1(scheme, seed), None, None,
                           self.delay_s, socket.gethostname())


def parse_delay(spec: str) -> float:
    """`synthetic` or `synthetic:SECONDS` -> the delay (seconds >= 0)."""
    text = spec[len(PREFIX):] if spec.startswith(PREFIX) else "0"
    try:
        delay = float(text)
    except ValueError:
        raise CoInferError(f"bad evaluator {spec!r}: expected synthetic:SECONDS") from None
    if not (delay >= 0 and math.isfinite(delay)):
        raise CoInferError(f"bad evaluator {spec!r}: the delay must be a finite number of seconds >= 0")
    return delay
