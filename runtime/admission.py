"""Who may hold a connection slot on the cloud server: pending (not yet authenticated) connections
are kept apart from established ones, so idle or unauthenticated peers cannot starve real clients.

    admission = Admission(AdmissionLimits(max_clients=64, max_pending=128, max_pending_per_peer=8))
    slot, refusal, evicted = admission.admit(host, label, task)   # at accept, before any TLS handshake
    refusal = admission.establish(slot)                            # after a valid HELLO (or first frame)
    admission.release(slot)                                        # when the connection ends

The rules, and why these and not others:

- **Slots reserved for established clients.** A connection starts *pending*; only when it has
  authenticated (a HELLO with the token; without a token, its first valid frame) does it take one of
  the `max_clients` slots. Pending connections never count against `max_clients`, so no number of
  idle or unauthenticated sockets can make the server answer BUSY to an authenticated client.
- **A short pre-auth deadline** (the server's `handshake_timeout`, 2 s by default, counted from the
  accept) bounds how long a pending connection lives, instead of the 300 s idle timeout.
- **The pending pool is bounded** (`max_pending`) and, when full, a pending connection is dropped
  to admit the new one: the oldest one of the address holding the most pending connections,
  when the newcomer's address holds none, or at least two fewer than that one (else the newcomer is
  refused). A flood from many addresses then shortens the life of *its own* pending connections
  instead of locking new clients out (an address with nothing pending always gets in), a real
  client (one pending connection, authenticated within a round trip) is only ever dropped once more
  than `max_pending` addresses hold one each, and once the attackers' addresses hold near-equal
  shares their newcomers are refused at once instead of pushing each other out in a loop (with TLS
  each admitted connection starts a handshake: that churn is what costs).
- **A per-peer cap on pending connections, when the pool is full** (`max_pending_per_peer`, by IP
  address): a newcomer from an address that already holds that many pending connections is refused
  at once instead of dropping another's, so one host cannot churn the pool. While the pool has
  room, an address may hold any number: many edge devices behind one NAT address connecting at once
  (64 with the defaults) are all admitted and all authenticate. The cap is on *pending* connections
  only, never on authenticated ones with a token.
- **TLS is inside admission** (`runtime.cloud`): a connection is admitted at the accept, before its
  TLS handshake, which runs under the same deadline; a stalled handshake is a pending connection
  like any other (in the pool, under the caps, dropped at the deadline).
- **Without a token**, "established" only means "spoke the protocol", so established connections
  are also capped per peer (`max_clients_per_peer`). With a token they are trusted and not capped
  per peer (many edge devices may share one NAT address).

No accept-rate limit: a refused or evicted connection costs the server one accept and one close,
which a rate limiter would have to spend anyway, and the pools above already bound memory
(at most `max_pending` + `max_clients` connections, each with one frame buffer). `bench.flood`
measures the result.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from cli.errors import CoInferError


@dataclass(frozen=True)
class AdmissionLimits:
    """Pool sizes (see the module doc); `max_clients_per_peer` None: no per-peer cap on established ones."""

    max_clients: int = 64
    max_pending: int = 128
    max_pending_per_peer: int = 8
    max_clients_per_peer: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_clients", "max_pending", "max_pending_per_peer", "max_clients_per_peer"):
            value = getattr(self, name)
            if value is None and name == "max_clients_per_peer":
                continue
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise CoInferError(f"{name} must be an integer of at least 1, got {value!r}")


@dataclass(eq=False)  # identity: a slot is one connection
class Slot:
    """One connection: its peer's address (`host`, the key of the per-peer caps), `label` (host:port
    for logs), its task, whether it is established, and whether a request is being computed."""

    host: str
    label: str
    task: asyncio.Task | None = None
    established: bool = False
    busy: bool = False
    since: float = field(default_factory=time.monotonic)


class Admission:
    """The bookkeeping of the two pools; no I/O (the server sends refusals and closes sockets)."""

    def __init__(self, limits: AdmissionLimits = AdmissionLimits()) -> None:
        self.limits = limits
        self.pending: OrderedDict[Slot, None] = OrderedDict()  # oldest first
        self.established: set[Slot] = set()
        self._pending_by_host: dict[str, OrderedDict[Slot, None]] = {}  # per address, oldest first
        self._established_by_host: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.pending) + len(self.established)

    def slots(self) -> list[Slot]:
        return [*self.pending, *self.established]

    def admit(self, host: str, label: str, task: asyncio.Task | None = None) -> tuple[Slot | None, str, Slot | None]:
        """(slot, "", evicted) for a new pending connection, `evicted` the pending one dropped to make
        room (the caller cancels it), or (None, why, None) when the pool is full and this peer holds
        `max_pending_per_peer` pending already."""
        evicted = None
        if len(self.pending) >= self.limits.max_pending:
            held = len(self._pending_by_host.get(host) or ())
            if held >= self.limits.max_pending_per_peer:
                return None, f"{held} unauthenticated connections from {host} and the pending pool full", None
            heaviest = max(self._pending_by_host.values(), key=lambda q: (len(q), -next(iter(q)).since))
            if held and held + 1 >= len(heaviest):  # it would hold as many as the one it pushes out: no gain
                return None, f"the pending pool full and {host} holding {held} (no address holds 2 more)", None
            evicted = next(iter(heaviest))
            self._drop(evicted)
        slot = Slot(host, label, task)
        self.pending[slot] = None
        self._pending_by_host.setdefault(host, OrderedDict())[slot] = None
        return slot, "", evicted

    def establish(self, slot: Slot) -> str:
        """Move a pending slot to the established pool: "" when done, else why not (it stays pending)."""
        if slot.established:
            return ""
        if len(self.established) >= self.limits.max_clients:
            return f"{len(self.established)} clients connected"
        cap = self.limits.max_clients_per_peer
        if cap is not None and self._established_by_host[slot.host] >= cap:
            return f"{self._established_by_host[slot.host]} clients connected from {slot.host}"
        self._drop(slot)
        slot.established = True
        self.established.add(slot)
        self._established_by_host[slot.host] += 1
        return ""

    def release(self, slot: Slot) -> None:
        """Forget a connection that ended (either pool; a second call is a no-op)."""
        self._drop(slot)
        if slot in self.established:
            self.established.discard(slot)
            self._established_by_host[slot.host] -= 1
            if not self._established_by_host[slot.host]:
                del self._established_by_host[slot.host]

    def _drop(self, slot: Slot) -> None:
        if slot in self.pending:
            del self.pending[slot]
            mine = self._pending_by_host[slot.host]
            del mine[slot]
            if not mine:
                del self._pending_by_host[slot.host]
